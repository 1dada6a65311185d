"""Identifier Dataset (as received) ↔ FindRequest, and SOP class → information model."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs_server.errors import InvalidQuery
from pacs_server.index.attributes import InformationModel
from pacs_server.services.query import FindRequest, QueryKey, key_vr
from pacs_server.values import value_text

PATIENT_ROOT = {str(PatientRootQueryRetrieveInformationModelFind),
                str(PatientRootQueryRetrieveInformationModelMove),
                str(PatientRootQueryRetrieveInformationModelGet)}
STUDY_ROOT = {str(StudyRootQueryRetrieveInformationModelFind),
              str(StudyRootQueryRetrieveInformationModelMove),
              str(StudyRootQueryRetrieveInformationModelGet)}
QR_FIND = [PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind]
QR_MOVE = [PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove]
QR_GET = [PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet]
WORKLIST = ModalityWorklistInformationFind


def model_of(sop_class_uid: str) -> InformationModel:
    if sop_class_uid in PATIENT_ROOT:
        return "PATIENT"
    if sop_class_uid in STUDY_ROOT:
        return "STUDY"
    raise InvalidQuery(f"unsupported information model {sop_class_uid}")


def parse_identifier(identifier: Dataset | None, sop_class_uid: str,
                     combined_datetime: bool = False) -> FindRequest:
    """Decode a C-FIND/C-MOVE/C-GET identifier into a FindRequest.

    Raises:
        InvalidQuery: missing or invalid QueryRetrieveLevel, undecodable identifier.
    """
    if identifier is None:
        raise InvalidQuery("the request has no identifier")
    model = model_of(sop_class_uid)
    try:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:
        raise InvalidQuery("QueryRetrieveLevel cannot be decoded") from None
    if not level:
        raise InvalidQuery("QueryRetrieveLevel is missing")
    keys: list[QueryKey] = []
    try:
        for elem in identifier:
            if elem.tag.group in (0x0000, 0x0002):
                continue
            keyword = elem.keyword or ""
            if keyword == "QueryRetrieveLevel":
                continue
            vr = key_vr(int(elem.tag), elem.VR)
            keys.append(QueryKey(int(elem.tag), keyword, vr, _as_text(elem), elem))
    except Exception as exc:
        raise InvalidQuery(f"identifier cannot be decoded: {exc}") from None
    return FindRequest(model=model, level=level, keys=tuple(keys),
                       combined_datetime=combined_datetime)


def _as_text(elem: object) -> str:
    value = getattr(elem, "value", None)
    if getattr(elem, "VR", "") == "SQ" or isinstance(value, bytes):
        return ""
    return value_text(value).strip()
