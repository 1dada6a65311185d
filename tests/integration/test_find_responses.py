"""C-FIND responses on the wire are, byte for byte, the P-DATA-TF PDUs pynetdicom's own
C-FIND SCP sends for the same answers (dicom/find_scp.py sends identifiers encoded by
services/answers.py and command sets encoded once per request), in both native transfer
syntaxes, fragmented or not, with answers in other character sets."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from support.instances import DicomFiles
from support.scu import FIND_S, PENDING, SUCCESS, Scu, identifier
from support.server import RunningServer

CHARSETS = ["chrH31.dcm", "chrRuss.dcm", "chrKoreanMulti.dcm"]
STUDY_KEYS = dict(PatientName="", PatientID="", StudyInstanceUID="", StudyDate="",
                  StudyTime="", AccessionNumber="", StudyDescription="", StudyID="",
                  ReferringPhysicianName="", InstitutionName="", ModalitiesInStudy="",
                  NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries="",
                  ReferencedStudySequence=[], PatientBirthDate="")
IMAGE_KEYS = dict(StudyInstanceUID="", SeriesInstanceUID="", SOPInstanceUID="",
                  SOPClassUID="", InstanceNumber="", ImageType="", PatientName="")


def as_values(ds: Dataset) -> Dataset:
    """The answer as values (decoded with its character set), not as received bytes."""
    out = Dataset()
    for elem in ds:
        value = elem.value
        if elem.VR == "SQ":
            value = DicomSequence([as_values(item) for item in value])
        out.add(DataElement(elem.tag, elem.VR, value))
    return out


def upstream_pdus(status: int, ident: Dataset | None, cx_id: int, max_pdu: int,
                  implicit: bool) -> list[bytes]:
    """What pynetdicom's `_c_find_scp` and DIMSE provider send for this response."""
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = FIND_S
    rsp.Status = status
    if ident is not None:
        rsp.Identifier = BytesIO(encode(as_values(ident), implicit, True))
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return [bytes(P_DATA_TF(p).encode()) for p in msg.encode_msg(cx_id, max_pdu)]


@pytest.fixture
def stored(server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> RunningServer:
    paths = [dicom_files.fresh(name) for name in [*CHARSETS, "CT_small.dcm", "MR_small.dcm"]]
    assert all(r.ok for r in scu.store(server.port, paths))
    return server


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("max_pdu", [0, 256])
@pytest.mark.parametrize(("level", "keys"), [("STUDY", STUDY_KEYS), ("IMAGE", IMAGE_KEYS)])
def test_find_responses_are_upstreams_bytes(stored: RunningServer, scu: Scu, syntax: str,
                                            max_pdu: int, level: str,
                                            keys: dict[str, Any]) -> None:
    received: list[bytes] = []

    def on_data(event: Any) -> None:
        if event.data[:1] == b"\x04":
            received.append(bytes(event.data))

    ae = scu.ae([(FIND_S, [syntax])])
    with scu.associate(stored.port, ae=ae, max_pdu=max_pdu,
                       evt_handlers=[(evt.EVT_DATA_RECV, on_data)]) as assoc:
        (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == FIND_S]
        responses = list(assoc.send_c_find(identifier(level, **keys), FIND_S))
    statuses = [int(st.Status) for st, _ in responses]
    assert statuses == [PENDING] * (len(statuses) - 1) + [SUCCESS]
    assert len(statuses) == 6         # five instances, five studies
    answers = [ident for _, ident in responses[:-1]]
    assert any("SpecificCharacterSet" in ds for ds in answers)
    expected: list[bytes] = []
    for (st, ident) in responses:
        expected += upstream_pdus(int(st.Status), ident, cx.context_id, max_pdu,
                                  syntax == ImplicitVRLittleEndian)
    assert received == expected
