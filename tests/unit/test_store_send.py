"""The C-STORE-RQ that dicom/store_send.py puts on the wire is upstream's, byte for byte,
the C-STORE-RSP it reads is the primitive upstream would make, and the C-GET/C-MOVE
responses it sends are upstream's bytes."""

from __future__ import annotations

import shutil
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_messages import (
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
)
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF

from pacs_server.dicom import store_send
from pacs_server.dicom.file_sending import StoredFile
from pacs_server.dicom.store_send import (
    RawPData,
    plain_status,
    response_pdus,
    send_file,
    store_response,
    store_rq_command,
)
from support.dimse import upstream_decode


def upstream_bytes(path: Path, context_id: int, max_pdu: int, msg_id: int, priority: int,
                   aet: str | None, orig_id: int | None) -> bytes:
    """What pynetdicom's send_c_store(path) sends (chunked dataset), as encoded PDUs."""
    meta, offset = split_dataset(path)
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = aet
    req.MoveOriginatorMessageID = orig_id
    req._dataset_path = (path, offset)
    req.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    req.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(context_id, max_pdu))


def our_bytes(path: Path, context_id: int, max_pdu: int, msg_id: int, priority: int,
              aet: str | None, orig_id: int | None) -> tuple[bytes, int]:
    meta = dcmread(path, stop_before_pixels=True).file_meta
    command = store_rq_command(str(meta.MediaStorageSOPClassUID),
                               str(meta.MediaStorageSOPInstanceUID), msg_id, priority, aet,
                               orig_id)
    items: list[RawPData] = []
    assert send_file(items.append, path, command, context_id, max_pdu)
    return b"".join(item.encoded for item in items), len(items)


@pytest.fixture
def ct_small(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    # As the archive writes it: File Meta with its group length, then the data set.
    dcmread(get_testdata_file("CT_small.dcm")).save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(("max_pdu", "msg_id", "priority", "aet", "orig_id"), [
    (16384, 1, 2, None, None),
    (131072, 7, 0, "MOVESCU", 3),          # odd-length AE title: padded with a space
    (1000, 65535, 1, "ORTHANC", 65535),    # many fragments
    (39000, 2, 2, "AE16CHARACTERSXX", 1),  # a PDU boundary near the end of the data
])
def test_request_bytes_equal_upstream(ct_small: Path, max_pdu: int, msg_id: int,
                                      priority: int, aet: str | None,
                                      orig_id: int | None) -> None:
    args = (ct_small, 3, max_pdu, msg_id, priority, aet, orig_id)
    ours, _ = our_bytes(*args)
    assert ours == upstream_bytes(*args)


def test_large_file_is_sent_in_bounded_chunks(ct_small: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 4 fragments: the data set spans several queue items, each whole PDUs.
    monkeypatch.setattr(store_send, "CHUNK_BYTES", 4 * (2000 - 6))
    args = (ct_small, 1, 2000, 9, 2, "X", 2)
    ours, items = our_bytes(*args)
    assert items > 2
    assert ours == upstream_bytes(*args)


def test_empty_data_set_equals_upstream(ct_small: Path, tmp_path: Path) -> None:
    meta_only = tmp_path / "meta-only.dcm"
    _meta, offset = split_dataset(ct_small)
    meta_only.write_bytes(ct_small.read_bytes()[:offset])
    args = (meta_only, 5, 16384, 1, 2, None, None)
    assert our_bytes(*args)[0] == upstream_bytes(*args)


def test_file_without_group_length_is_left_to_upstream(tmp_path: Path) -> None:
    src = Path(get_testdata_file("CT_small.dcm"))
    raw = src.read_bytes()
    path = tmp_path / "no-preamble.dcm"
    path.write_bytes(raw[128:])                     # no preamble: not found by us
    items: list[RawPData] = []
    assert not send_file(items.append, path, b"", 1, 16384)
    assert not items
    shutil.copy(src, tmp_path / "copy.dcm")
    assert not send_file(items.append, tmp_path / "copy.dcm", b"", 1, 0)   # max PDU 0
    assert not items



def response_command(status: int, error_comment: str | None = None,
                     instance: str | None = "1.2.3.4.5") -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    rsp.ErrorComment = error_comment
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return encode(msg.command_set, True, True)


KEYWORDS = ("MessageIDBeingRespondedTo", "Status", "AffectedSOPClassUID",
            "AffectedSOPInstanceUID", "ErrorComment", "OffendingElement")


@pytest.mark.parametrize(("status", "instance"), [
    (0x0000, "1.2.3.4.5"), (0xB000, "1.2.3.4.56"), (0xA700, None)])
def test_plain_response_reads_as_upstream(status: int, instance: str | None) -> None:
    command = response_command(status, instance=instance)
    ours, theirs = store_response(command), upstream_decode(command)
    assert ours is not None
    assert {k: getattr(ours, k) for k in KEYWORDS} == {k: getattr(theirs, k) for k in KEYWORDS}
    assert ours.is_valid_response


def test_other_responses_are_left_to_upstream() -> None:
    assert store_response(response_command(0xC000, error_comment="no space")) is None
    assert store_response(response_command(0)[:-3]) is None           # truncated
    echo = bytearray(response_command(0))
    echo[echo.index(b"\x01\x80")] = 0x30                               # C-ECHO-RSP
    assert store_response(bytes(echo)) is None


def test_plain_status_is_upstreams_status_and_read_only() -> None:
    rsp = store_response(response_command(0xB000))
    assert rsp is not None
    shared = plain_status(rsp)
    assert shared == Association._check_received_status(None, rsp)   # type: ignore[arg-type]
    assert plain_status(rsp) is shared
    with pytest.raises(TypeError):
        shared.Status = 0
    with pytest.raises(TypeError):
        del shared.Status
    rsp.ErrorComment = "coerced"     # an optional status element: upstream's Dataset
    assert plain_status(rsp) is None


def test_stored_file_names_its_instance() -> None:
    stored = StoredFile(Path("/a/b.dcm"), "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2")
    assert "SOPInstanceUID" in stored and stored.SOPInstanceUID == "1.2.3"
    assert str(stored.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.2"
    assert (stored.stored_path, stored.stored_syntax, stored.allow_transcode) == \
        (Path("/a/b.dcm"), "1.2.840.10008.1.2", True)


def upstream_response_pdus(primitive: Any, context_id: int, max_pdu: int) -> bytes:
    msg = C_GET_RSP() if isinstance(primitive, C_GET) else C_MOVE_RSP()
    msg.primitive_to_message(primitive)
    return b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(context_id, max_pdu))


@pytest.mark.parametrize("kind", [C_GET, C_MOVE])
@pytest.mark.parametrize("final", [False, True])
def test_retrieve_responses_equal_upstream(kind: type, final: bool) -> None:
    rsp = kind()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.3"
    rsp.NumberOfCompletedSuboperations = 3
    rsp.NumberOfFailedSuboperations = 1
    rsp.NumberOfWarningSuboperations = 0
    if final:       # 0xB000 with the Failed SOP Instance UID List (PS3.4 C.4.3.1.3.1)
        rsp.Status = 0xB000
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = ["1.2.3.4", "1.2.3.5"]
        rsp.Identifier = BytesIO(encode(failed, True, True))
    else:
        rsp.Status = 0xFF00
        rsp.NumberOfRemainingSuboperations = 496
    for max_pdu in (16384, 40):
        assert response_pdus(rsp, 5, max_pdu) == upstream_response_pdus(rsp, 5, max_pdu)


def test_response_uids_are_checked_by_upstream_when_read() -> None:
    command = bytearray(response_command(0))
    at = command.index(b"1.2.3.4.5")
    command[at:at + 9] = b"1.2.3.x.5"          # not a UID: upstream's setter refuses it
    rsp = store_response(bytes(command))
    assert rsp is not None and rsp.Status == 0
    # What upstream's decode does with it depends on the process-wide validation mode
    # (dicom/runtime.py relaxes pydicom's): the first read does the same.
    try:
        theirs = upstream_decode(bytes(command)).AffectedSOPInstanceUID
    except (ValueError, UserWarning) as exc:
        with pytest.raises(type(exc)):
            _ = rsp.AffectedSOPInstanceUID
    else:
        assert rsp.AffectedSOPInstanceUID == theirs == "1.2.3.x.5"
    assert str(rsp.AffectedSOPClassUID) == "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3.4.6"    # set, not read: upstream's setter
    assert rsp.AffectedSOPInstanceUID == "1.2.3.4.6"
