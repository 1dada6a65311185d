"""dicom/acceptor.py's pieces on their own: the C-ECHO-RQ decoded by hand gives what
pynetdicom's decode gives, and anything else is left to pynetdicom; the handler table
is what binding one handler at a time leaves (the one-thread association itself runs in
tests/integration/test_association_setup.py, test_transport_reactors.py and every
interop test)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association, ServiceUser
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

from pacs_server.dicom.acceptor import copy_handlers, echo_request, handler_table, service_user
from support.dimse import upstream_decode

VERIFICATION = "1.2.840.10008.1.1"


def echo_command(msg_id: int, sop_class: str = VERIFICATION) -> bytes:
    """The command set pynetdicom sends for a C-ECHO-RQ."""
    request = C_ECHO()
    request.MessageID = msg_id
    request.AffectedSOPClassUID = sop_class
    msg = C_ECHO_RQ()
    msg.primitive_to_message(request)
    (pdata,) = msg.encode_msg(1, 16384)
    ((_cx, data),) = pdata.presentation_data_value_list
    assert data[:1] == b"\x03"
    return bytes(data[1:])



@pytest.mark.parametrize("msg_id", [1, 7, 65535])
def test_echo_request_matches_pynetdicom(msg_id: int) -> None:
    command = echo_command(msg_id)
    ours, theirs = echo_request(command), upstream_decode(command)
    assert isinstance(ours, C_ECHO)
    assert ours.MessageID == theirs.MessageID == msg_id
    assert ours.AffectedSOPClassUID == theirs.AffectedSOPClassUID == VERIFICATION
    assert ours.is_valid_request


def element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, elem, len(value)) + value


@pytest.mark.parametrize("change", [
    "data set present", "C-FIND-RQ", "extra element", "truncated", "no message id",
    "no sop class", "other group"])
def test_anything_but_a_plain_echo_request_is_left_to_pynetdicom(change: str) -> None:
    uid = element(0x0002, b"1.2.840.10008.1.1\0")
    field = element(0x0100, struct.pack("<H", 0x0030))
    msg_id = element(0x0110, struct.pack("<H", 1))
    data_set = element(0x0800, struct.pack("<H", 0x0101))
    parts = {"uid": uid, "field": field, "id": msg_id, "ds": data_set}
    if change == "data set present":
        parts["ds"] = element(0x0800, struct.pack("<H", 0x0001))
    elif change == "C-FIND-RQ":
        parts["field"] = element(0x0100, struct.pack("<H", 0x0020))
    elif change == "extra element":
        parts["prio"] = element(0x0700, struct.pack("<H", 0))
    elif change == "no message id":
        del parts["id"]
    elif change == "no sop class":
        del parts["uid"]
    elif change == "other group":
        parts["uid"] = struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\0"
    body = b"".join(parts.values())
    command = element(0x0000, struct.pack("<I", len(body))) + body
    if change == "truncated":
        command = command[:-3]
    else:
        assert echo_request(echo_command(1)) is not None
    assert echo_request(command) is None


@pytest.mark.parametrize("level", ["standard", "none"])
def test_handler_table_is_what_binding_leaves(level: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", level)

    def on_open(event: Any) -> None: ...

    def on_echo(event: Any) -> int:
        return 0

    bound = {evt.EVT_CONN_OPEN: [(on_open, None)], evt.EVT_C_ECHO: (on_echo, None)}
    assoc = Association(AE(), MODE_ACCEPTOR)
    for event, handlers in bound.items():
        if event.is_intervention:
            assoc.bind(event, *handlers)
        else:
            for handler in handlers:
                assoc.bind(event, handler[0], handler[1])
    table = handler_table(bound)
    assert table == assoc._handlers
    mine = copy_handlers(table)
    mine[evt.EVT_CONN_OPEN].append((on_echo, None))
    assert table[evt.EVT_CONN_OPEN] == [(on_open, None)]


@pytest.mark.parametrize("mode", ["requestor", "acceptor"])
def test_service_user_is_what_upstream_builds(mode: str) -> None:
    """service_user's copy equals `ServiceUser(assoc, mode)` field by field, and shares
    no container with the template or another association's user."""
    ae = AE()
    assoc = Association(ae, MODE_ACCEPTOR)
    first = service_user(assoc, mode)
    second = service_user(assoc, mode)
    upstream = ServiceUser(assoc, mode)
    for user in (first, second):
        assert vars(user).keys() == vars(upstream).keys()
        for name, value in vars(upstream).items():
            got = vars(user)[name]
            if name == "_user_info":
                assert [(type(i), vars(i)) for i in got] == [(type(i), vars(i)) for i in value]
            else:
                assert got == value or got is value, name
        assert user.implementation_class_uid == ae.implementation_class_uid
    first.maximum_length = 1234
    first.add_negotiation_item(SCP_SCU_RoleSelectionNegotiation())
    assert second.maximum_length == upstream.maximum_length != 1234
    assert second.extended_negotiation == [] and first.extended_negotiation != []
    first.assoc = None   # a copy of its own: the next one still gets its association
    assert service_user(assoc, mode).assoc is assoc


def test_service_user_follows_the_implementation_class_uid() -> None:
    ae = AE()
    ae.implementation_class_uid = "1.2.826.0.1.3680043.9.9999.1"
    assoc = Association(ae, MODE_ACCEPTOR)
    assert service_user(assoc, "acceptor").implementation_class_uid.endswith(".9999.1")
    ae.implementation_class_uid = "1.2.826.0.1.3680043.9.9999.2"
    assert service_user(assoc, "acceptor").implementation_class_uid.endswith(".9999.2")
