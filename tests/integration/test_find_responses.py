"""C-FIND responses on the wire are, byte for byte, the P-DATA-TF PDUs pynetdicom's own
C-FIND SCP sends for the same answers (dicom/find_scp.py sends identifiers encoded by
services/answers.py and command sets encoded once per request), in both native transfer
syntaxes (and Deflated and Big Endian, where the answers are still Datasets encoded by
pydicom), fragmented or not, with answers in other character sets; and the Modality
Worklist SCP's, whose answers are encoded the same way."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from pacs_server.config import Config
from pacs_server.index.worklist import WorklistRepository
from support.instances import DicomFiles
from support.scu import FIND_S, PENDING, SUCCESS, Scu, identifier
from support.server import RunningServer
from support.worklist import MWL, add_items, item
from support.worklist import query as mwl_query

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


def upstream_pdus(status: Dataset, ident: Dataset | None, model: str, cx_id: int,
                  max_pdu: int, syntax: UID) -> list[bytes]:
    """What pynetdicom's `_c_find_scp` and DIMSE provider send for this response."""
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = model
    rsp.Status = int(status.Status)
    if "ErrorComment" in status:
        rsp.ErrorComment = status.ErrorComment
    if ident is not None:
        rsp.Identifier = BytesIO(encode(as_values(ident), syntax.is_implicit_VR,
                                        syntax.is_little_endian, syntax.is_deflated))
    msg = C_FIND_RSP()
    msg.primitive_to_message(rsp)
    return [bytes(P_DATA_TF(p).encode()) for p in msg.encode_msg(cx_id, max_pdu)]


def find_on_the_wire(scu: Scu, port: int, model: str, query: Dataset, syntax: str,
                     max_pdu: int, final: int = SUCCESS) -> list[Dataset]:
    """C-FIND `query`; asserts the P-DATA-TF PDUs received are upstream's for the
    responses received and the last status is `final`; returns the answers."""
    received: list[bytes] = []

    def on_data(event: Any) -> None:
        if event.data[:1] == b"\x04":
            received.append(bytes(event.data))

    ae = scu.ae([(model, [syntax])])
    with scu.associate(port, ae=ae, max_pdu=max_pdu,
                       evt_handlers=[(evt.EVT_DATA_RECV, on_data)]) as assoc:
        (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == model]
        responses = list(assoc.send_c_find(query, model))
    statuses = [int(st.Status) for st, _ in responses]
    assert statuses == [PENDING] * (len(statuses) - 1) + [final]
    expected: list[bytes] = []
    for st, ident in responses:
        expected += upstream_pdus(st, ident, model, cx.context_id, max_pdu,
                                  UID(syntax))
    assert received == expected
    return [ident for _, ident in responses[:-1]]


@pytest.fixture
def stored(server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> RunningServer:
    paths = [dicom_files.fresh(name) for name in [*CHARSETS, "CT_small.dcm", "MR_small.dcm"]]
    assert all(r.ok for r in scu.store(server.port, paths))
    return server


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("max_pdu", [0, 256])
@pytest.mark.parametrize(("level", "keys"), [("STUDY", STUDY_KEYS), ("IMAGE", IMAGE_KEYS)])
def test_find_responses_are_upstreams_bytes(stored: RunningServer, scu: Scu, syntax: str,
                                            max_pdu: int, level: str,
                                            keys: dict[str, Any]) -> None:
    answers = find_on_the_wire(scu, stored.port, FIND_S, identifier(level, **keys), syntax,
                               max_pdu)
    assert len(answers) == 5         # five instances, five studies
    assert any("SpecificCharacterSet" in ds for ds in answers)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
async def test_worklist_responses_are_upstreams_bytes(server: RunningServer,
                                                      worklist: WorklistRepository, scu: Scu,
                                                      syntax: str) -> None:
    await add_items(worklist, [item(1, patientName="Wang^XiaoDong=王^小東"),
                               item(2, patientName="GÜNTHER^ÉLODIE"), item(3)])
    answers = await asyncio.to_thread(find_on_the_wire, scu, server.port, MWL, mwl_query(),
                                      syntax, 256)
    assert len(answers) == 3
    assert answers[0].SpecificCharacterSet == "ISO_IR 192"


async def test_a_failure_after_matches_is_upstreams_bytes(
        start_server: Callable[..., Awaitable[RunningServer]], make_cfg: Callable[..., Config],
        scu: Scu, dicom_files: DicomFiles) -> None:
    srv = await start_server(make_cfg({"query.max_results": 2}))
    paths = [dicom_files.fresh(name) for name in CHARSETS]
    assert all(r.ok for r in await asyncio.to_thread(scu.store, srv.port, paths))
    answers = await asyncio.to_thread(find_on_the_wire, scu, srv.port, FIND_S,
                                      identifier("STUDY", **STUDY_KEYS),
                                      ImplicitVRLittleEndian, 256, 0xA700)
    assert len(answers) == 2        # then 0xA700 with its Error Comment


def test_with_pynetdicom_debug_logging_the_bytes_are_the_same(
        stored: RunningServer, scu: Scu, monkeypatch: pytest.MonkeyPatch) -> None:
    # pynetdicom logs every message at DEBUG: the responses then go through its own
    # message encoding (ResponseDIMSE._fast_path) and the identifiers are logged.
    monkeypatch.setattr(pynetdicom_config, "LOG_RESPONSE_IDENTIFIERS", True)
    log = logging.getLogger("pynetdicom")
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        answers = find_on_the_wire(scu, stored.port, FIND_S,
                                   identifier("STUDY", **STUDY_KEYS),
                                   ExplicitVRLittleEndian, 256)
    finally:
        log.setLevel(level)
    assert len(answers) == 5
