"""pynetdicom's own decode of a command set, the reference for our hand-decoded ones."""

from __future__ import annotations

from typing import Any

from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA


def upstream_decode(command: bytes) -> Any:
    """The primitive pynetdicom makes of `command` sent as one last command fragment."""
    msg = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((1, b"\x03" + command))
    assert msg.decode_msg(pdata)
    return msg.message_to_primitive()
