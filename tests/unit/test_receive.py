"""dicom/receive.py: the C-STORE-RQ command set decoded by hand, as upstream decodes it."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from pynetdicom import _config as pynetdicom_config
from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacs_server.dicom.receive import ReceivedStore, read_pdata, store_command

CT = "1.2.840.10008.5.1.4.1.1.2"
FIELDS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
          "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


def command_bytes(primitive: Any, message: type = C_STORE_RQ) -> bytes:
    """The command set pynetdicom encodes for `primitive` (its fragments joined)."""
    msg = message()
    msg.primitive_to_message(primitive)
    out = b""
    for pdata in msg.encode_msg(1, 0):
        for _cx, data in pdata.presentation_data_value_list:
            if data[0] & 1:
                out += data[1:]
    return out


def store_rq(**fields: Any) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = fields.pop("MessageID", 7)
    rq.AffectedSOPClassUID = fields.pop("AffectedSOPClassUID", CT)
    rq.AffectedSOPInstanceUID = fields.pop("AffectedSOPInstanceUID", "1.2.3.4.5")
    rq.Priority = fields.pop("Priority", 2)
    for key, value in fields.items():
        setattr(rq, key, value)
    rq.DataSet = BytesIO(b"\x08\x00\x18\x00UI\x04\x001.2\x00")
    return rq


def upstream_primitive(raw: bytes) -> Any:
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + raw], [1, b"\x02\x00"]]
    msg = DIMSEMessage()
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()


def ours(raw: bytes) -> Any:
    fields = store_command(raw)
    assert fields is not None
    msg = DIMSEMessage()
    msg.__class__ = ReceivedStore
    store: Any = msg
    store.fields, store.context_id = fields, 1
    store._data_set_path = store._data_set_file = None
    return store.message_to_primitive()


@pytest.mark.parametrize("fields", [
    {}, {"Priority": 1, "MessageID": 65535},
    {"AffectedSOPInstanceUID": "1.2.3.45"},          # odd length: padded with a null
    {"MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 3},
    {"MoveOriginatorApplicationEntityTitle": " A B "},
], ids=["plain", "priority-id", "odd-uid", "move-originator", "ae-spaces"])
def test_store_command_sets_become_the_primitive_upstream_builds(
        fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Upstream's in-memory receive (the server turns chunked receive on process-wide).
    monkeypatch.setattr(pynetdicom_config, "STORE_RECV_CHUNKED_DATASET", False)
    raw = command_bytes(store_rq(**fields))
    want, got = upstream_primitive(raw), ours(raw)
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name
        assert type(getattr(got, name)) is type(getattr(want, name)), name


def element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def test_anything_unusual_is_left_to_upstream() -> None:
    raw = command_bytes(store_rq())
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert store_command(command_bytes(echo, C_ECHO_RQ)) is None
    no_data = raw.replace(element(0x00000800, b"\x01\x00"), element(0x00000800, b"\x01\x01"))
    assert no_data != raw and store_command(no_data) is None
    assert store_command(raw + element(0x00000901, b"\x00\x00")) is None     # unknown
    assert store_command(raw + element(0x00001000, b"1.2\x00")) is None      # repeated
    assert store_command(raw[:-1]) is None                                    # cut short
    multi = command_bytes(store_rq(AffectedSOPInstanceUID="1.2.3.4.5"))
    assert store_command(multi.replace(b"1.2.3.4.5\x00", b"1.2\\3.45")) is None
    assert store_command(raw) is not None


class _Assoc:
    """What `read_pdata` asks of an association: its bound handlers."""

    def __init__(self, handlers: dict[Any, list[Any]] | None = None) -> None:
        self.handlers = handlers or {evt.EVT_PDU_RECV: [(standard_pdu_recv_handler, None)]}

    def get_handlers(self, event: Any) -> list[Any]:
        return self.handlers.get(event, [])


def _pdata_tf(*pdvs: tuple[int, bytes]) -> bytes:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(pdv) for pdv in pdvs]
    return bytes(P_DATA_TF(primitive).encode())


@pytest.mark.parametrize("pdvs", [
    [(1, b"\x03" + bytes(range(200)))],
    [(3, b"\x01abc"), (3, b"\x03defg"), (5, b"\x00" + bytes(16378))],
    [(7, b"\x02")],
], ids=["one", "three", "header-only"])
def test_pdata_read_as_upstream_decodes_it(pdvs: list[tuple[int, bytes]]) -> None:
    raw = _pdata_tf(*pdvs)
    upstream = P_DATA_TF()
    upstream.decode(raw)
    ours = read_pdata(_Assoc(), raw)
    assert ours is not None
    assert ours.to_primitive().presentation_data_value_list \
        == upstream.to_primitive().presentation_data_value_list == pdvs


@pytest.mark.parametrize("raw", [
    bytes.fromhex("04000000000a") + bytes.fromhex("0000000901") + b"\x03abc",   # short item
    bytes.fromhex("04000000000a") + bytes.fromhex("0000000001") + b"\x03abc",   # length 0
    bytes.fromhex("040000000007") + bytes.fromhex("00000002"),                  # cut header
    bytes.fromhex("010000000000"),                                              # not P-DATA
], ids=["overrun", "zero-length", "cut", "associate-rq"])
def test_anything_odd_is_left_to_upstream(raw: bytes) -> None:
    assert read_pdata(_Assoc(), raw) is None


def test_observed_pdus_are_left_to_upstream() -> None:
    raw = _pdata_tf((1, b"\x03abcd"))
    seen = [(lambda event: None, None)]
    assert read_pdata(_Assoc({evt.EVT_DATA_RECV: seen}), raw) is None
    assert read_pdata(_Assoc({evt.EVT_PDU_RECV: seen}), raw) is None
