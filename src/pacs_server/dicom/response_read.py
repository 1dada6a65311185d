"""A C-STORE-RSP read by the DUL thread straight into the DIMSE queue, events transport.

An override module of pynetdicom (with dicom/transport.py, reactor.py, store_send.py,
retrieve_scp.py; pinned by tests/unit/test_transport_pins.py). Every C-GET/C-MOVE
sub-operation ends with the peer's C-STORE-RSP, one P-DATA-TF of ~100 bytes. Upstream's
DUL thread decodes it into a `P_DATA_TF` object (one item object per PDV), triggers
EVT_DATA_RECV and EVT_PDU_RECV, queues Evt10, runs the state machine (DT-2, Sta6 to
Sta6, EVT_FSM_TRANSITION), turns the PDU into a `P_DATA` primitive and hands it to the
DIMSE provider, which (dicom/store_send.py `RetrieveDimse`) reads the command set:
~9% of a sub-operation's server CPU (py-spy, docs/performance.md "Results: the retrieve
SCP loop"). `ResponseReadingDUL` reads the PDU as upstream does (recv(6), then
recv(length): `GuardedSocket` counts on it) and, when it is one PDV holding the whole
command set of a plain C-STORE-RSP (`store_send.store_response`), in Sta6, with nothing
listening for what is skipped (`skips_nothing`), puts the response on the DIMSE queue
itself. Any other PDU takes upstream's path, unchanged.

Upstream change that would remove this module: a DUL that hands a P-DATA-TF's PDVs to
DIMSE without the PDU and primitive objects, and a command set decoder without pydicom.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.dul import LOGGER, DULServiceProvider
from pynetdicom.transport import AssociationSocket

from pacs_server.dicom.store_send import RetrieveDimse, raw_receive_allowed, store_response

_PDU_TYPES = frozenset(range(0x01, 0x08))
# PDU header (6), PDV item length (4), presentation context ID (1), control header (1).
_PDV_DATA = 12
_LAST_COMMAND = 0x03


class ResponseReadingDUL(DULServiceProvider):
    """The DUL with a plain C-STORE-RSP handed to DIMSE as it is read (a mixin placed
    before our `EventDUL`)."""

    def _read_pdu_data(self) -> None:
        """Upstream's `_read_pdu_data`, with a plain C-STORE-RSP taken by `_take_response`.

        Upstream: every PDU decoded into its object and queued as an event for the
        state machine (module docstring: ~9% of a sub-operation).
        Upstream change that would remove this: the module docstring's.
        """
        sock = cast(AssociationSocket, self.socket)
        bytestream = bytearray()
        try:
            bytestream.extend(sock.recv(6))
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = struct.unpack(">BBL", bytestream)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in _PDU_TYPES:
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            bytestream += sock.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(bytestream) != 6 + pdu_length:
            LOGGER.error(f"The received PDU is shorter than expected ({len(bytestream)} of "
                         f"{6 + pdu_length} bytes received)")
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._take_response(bytestream):
            return
        try:
            pdu, event = self._decode_pdu(bytestream)
            self.event_queue.put(event)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _take_response(self, pdu: bytearray) -> bool:
        """Put a P-DATA-TF that is one plain C-STORE-RSP on the DIMSE queue, as DT-2 and
        `RetrieveDimse.receive_primitive` would; False (nothing done) otherwise."""
        if len(pdu) <= _PDV_DATA or pdu[11] != _LAST_COMMAND \
                or int.from_bytes(pdu[6:10], "big") != len(pdu) - 10 \
                or self.state_machine.current_state != "Sta6":
            return False
        assoc = self.assoc
        dimse = assoc.dimse
        if not isinstance(dimse, RetrieveDimse) or dimse.message is not None \
                or not skips_nothing(assoc):
            return False
        try:
            rsp = store_response(bytes(pdu[_PDV_DATA:]))
        except (ValueError, UnicodeDecodeError):
            return False        # upstream reports it
        if rsp is None:
            return False
        dimse.msg_queue.put((pdu[10], rsp))
        return True


def skips_nothing(assoc: Any) -> bool:
    """Whether skipping EVT_DATA_RECV, EVT_PDU_RECV, EVT_FSM_TRANSITION and
    EVT_DIMSE_RECV loses nothing: no handler but pynetdicom's standard ones (which log
    nothing for a P-DATA-TF, and a C-STORE-RSP only at INFO: `raw_receive_allowed`)."""
    return not assoc.get_handlers(evt.EVT_DATA_RECV) \
        and not assoc.get_handlers(evt.EVT_FSM_TRANSITION) \
        and all(h[0] is standard_pdu_recv_handler for h in assoc.get_handlers(evt.EVT_PDU_RECV)) \
        and not _LOG.isEnabledFor(logging.DEBUG) and raw_receive_allowed(assoc)


_LOG = logging.getLogger("pynetdicom")
