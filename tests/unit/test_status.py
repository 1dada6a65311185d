"""dicom/status.py: the one table from domain errors to DIMSE statuses."""

from __future__ import annotations

import pytest
from pynetdicom import status as pnd

from pacs_server import errors
from pacs_server.dicom.status import (
    GENERIC_FAILURE,
    STATUS,
    Service,
    failure,
    status_code,
)

# The statuses the C-STORE SCP promises (PS3.4 B.2.3, PS3.7 C.4).
STORE_CODES = {
    errors.DuplicateInstance: 0x0111,
    errors.StorageFull: 0xA700,
    errors.StorageUnavailable: 0xA700,
    errors.IndexUnavailable: 0xA700,
    errors.DatasetMismatch: 0xA900,
    errors.UnreadableDataset: 0xC000,
}

PYNETDICOM_TABLES = {
    Service.C_STORE: pnd.STORAGE_SERVICE_CLASS_STATUS,
    Service.C_FIND: pnd.QR_FIND_SERVICE_CLASS_STATUS,
    Service.WORKLIST: pnd.MODALITY_WORKLIST_SERVICE_CLASS_STATUS,
    Service.C_MOVE: pnd.QR_MOVE_SERVICE_CLASS_STATUS,
    Service.C_GET: pnd.QR_GET_SERVICE_CLASS_STATUS,
    Service.C_ECHO: pnd.VERIFICATION_SERVICE_CLASS_STATUS,
    Service.MPPS_N_CREATE: pnd.GENERAL_STATUS,
    Service.MPPS_N_SET: pnd.GENERAL_STATUS,
    Service.COMMITMENT_N_ACTION: pnd.STORAGE_COMMITMENT_SERVICE_CLASS_STATUS,
}

# The N-ACTION statuses the Storage Commitment SCP promises (PS3.4 J.3.2, PS3.7 10.1.4.1.10).
COMMITMENT_CODES = {
    errors.NoSuchAction: 0x0123,
    errors.InvalidArgument: 0x0115,
    errors.NoSuchInstance: 0x0112,
    errors.IndexUnavailable: 0x0213,
}


@pytest.mark.parametrize(("exc_type", "code"), STORE_CODES.items(),
                         ids=[t.__name__ for t in STORE_CODES])
def test_c_store_codes(exc_type: type[errors.PacsError], code: int) -> None:
    assert status_code(Service.C_STORE, exc_type("x")) == code
    ds = failure(Service.C_STORE, exc_type("what went wrong"))
    assert ds.Status == code
    assert ds.ErrorComment == "what went wrong"


def test_store_table_has_exactly_the_promised_entries() -> None:
    assert STATUS[Service.C_STORE] == STORE_CODES


def test_commitment_table_has_exactly_the_promised_entries() -> None:
    assert STATUS[Service.COMMITMENT_N_ACTION] == COMMITMENT_CODES
    assert GENERIC_FAILURE[Service.COMMITMENT_N_ACTION] == 0x0110


@pytest.mark.parametrize("service", list(Service))
def test_every_code_is_a_failure_in_pynetdicoms_table(service: Service) -> None:
    table = PYNETDICOM_TABLES[service]
    codes = [*STATUS[service].values(), GENERIC_FAILURE[service]]
    for code in codes:
        assert code in table, f"{service.value}: 0x{code:04X} unknown to pynetdicom"
        assert table[code][0] == pnd.STATUS_FAILURE, (
            f"{service.value}: 0x{code:04X} is {table[code][0]}, not a failure")


@pytest.mark.parametrize("service", list(Service))
def test_unknown_errors_get_the_generic_failure(service: Service) -> None:
    assert status_code(service, RuntimeError("boom")) == GENERIC_FAILURE[service]
    assert status_code(service, errors.PacsError("base")) == GENERIC_FAILURE[service]


def test_subclasses_inherit_their_parents_code() -> None:
    class VeryFull(errors.StorageFull):
        pass

    assert status_code(Service.C_STORE, VeryFull("x")) == 0xA700


def test_error_comment_is_clean_bounded_lo() -> None:
    text = "naïve\\path\x00\x1b[31m" + "x" * 200
    ds = failure(Service.C_STORE, errors.UnreadableDataset(text))
    comment = ds.ErrorComment
    assert len(comment) == 64
    assert comment.startswith("na?ve?path??[31m")
    assert all(32 <= ord(c) < 127 and c != "\\" for c in comment)


def test_empty_message_falls_back_to_the_type_name() -> None:
    assert failure(Service.C_STORE, errors.StorageFull()).ErrorComment == "StorageFull"


# The statuses the MPPS SCP promises (PS3.4 F.7.2, PS3.7 C.5 and 10.1.3.1.9 / 10.1.5.1.6).
MPPS_CODES = {
    Service.MPPS_N_CREATE: {
        errors.InstanceExists: 0x0111,
        errors.MissingAttribute: 0x0120,
        errors.MissingAttributeValue: 0x0121,
        errors.InvalidAttributeValue: 0x0106,
        errors.IndexUnavailable: 0x0110,
    },
    Service.MPPS_N_SET: {
        errors.NoSuchInstance: 0x0112,
        errors.StepFinalised: 0x0110,
        errors.AttributeNotAllowed: 0x0105,
        errors.MissingAttributeValue: 0x0121,
        errors.InvalidAttributeValue: 0x0106,
        errors.IndexUnavailable: 0x0110,
    },
}


@pytest.mark.parametrize(("service", "exc_type", "code"),
                         [(s, e, c) for s, table in MPPS_CODES.items() for e, c in table.items()],
                         ids=[f"{s.value}-{e.__name__}" for s, t in MPPS_CODES.items() for e in t])
def test_mpps_codes(service: Service, exc_type: type[errors.PacsError], code: int) -> None:
    exc = (exc_type("x", [0x00080060]) if issubclass(exc_type, errors._NamesAttributes)
           else exc_type("x"))
    assert status_code(service, exc) == code
    # ...and each is a status PS3.4 lets a Procedure Step SCP answer.
    assert pnd.PROCEDURE_STEP_STATUS[code][0] == pnd.STATUS_FAILURE


def test_named_attributes_become_the_attribute_identifier_list() -> None:
    exc = errors.AttributeNotAllowed("N-SET may not change", [0x00100020, 0x00080060])
    ds = failure(Service.MPPS_N_SET, exc)
    assert (ds.Status, list(ds.AttributeIdentifierList)) == (0x0105, [0x00100020, 0x00080060])
    assert "ErrorID" not in ds


def test_finalised_step_answers_the_standards_error_id() -> None:
    ds = failure(Service.MPPS_N_SET, errors.StepFinalised("may no longer be updated"))
    assert (ds.Status, ds.ErrorID) == (0x0110, 0xA710)     # PS3.4 Table F.7.2-2
    assert "AttributeIdentifierList" not in ds


def test_missing_attributes_are_dataset_mismatches_elsewhere() -> None:
    assert status_code(Service.C_STORE, errors.MissingAttribute("x", [1])) == 0xA900
