"""The receive side of C-STORE, below pynetdicom's DIMSE layer: each data set is written
into its receive file as its fragments arrive, behind the File Meta Information the
archive keeps; and below `storage.min_free_bytes` a data set is dropped unread.

An override module of pynetdicom, with dicom/transport.py and dicom/reactor.py (each
override says what upstream does, why, and what upstream change would remove it; the
upstream code they replace is pinned in tests/unit/test_transport_pins.py).

With chunked receive (dicom/runtime.py) pynetdicom, on the last fragment of a
C-STORE-RQ's command set, decodes the command set with pydicom, opens a
`NamedTemporaryFile` in the archive's .incoming, writes a File Meta group built with
pydicom (`create_file_meta` + `write_file_meta_info`), then appends every data set
fragment through the file object (a copy of the fragment and a flush each); at the end
it converts the command set to a primitive element by element. That is ~1 ms of the DUL
thread's ~2 ms per small instance (docs/performance.md, "the store path's CPU"), and the
handler then copied the data set into a second file behind our own File Meta.

Here (`ReceivingMessage`, `ReceivedStore`) a C-STORE-RQ's command set of the usual
elements is decoded by hand (PS3.7 9.3.1.1: Implicit VR Little Endian; every value
with pydicom's own converter), the receive file is opened with the archive's File Meta
(services/ingest.file_meta_bytes, the request's UIDs), fragments are written from the
PDV bytes without a copy, and the primitive is built from the decoded fields. When the
data set's UIDs are the request's, the archive keeps this file as it is
(ArchiveService.stage `adopt`): fsynced, never copied. Any other message, and a
command set with anything unusual in it, is upstream's.
Upstream change that would remove this: a receive callback (or a file factory) for
C-STORE data sets given the decoded command set, and a cheaper command set decode.

The PDUs themselves (`read_pdata`, called by `reactor.EventDUL._decode_pdu` in Sta6):
upstream decodes each P-DATA-TF into item objects and fires two events (an Event built
for each, with only its own no-op handler bound), then copies the items into the
P-DATA primitive; here the PDV list is read straight from the bytes.

Receiving into a full archive
-----------------------------
The handler runs only once the whole data set is on disk. Below the reserve that writes
up to a whole instance (a 2 GB one fills what the reserve is there to keep) before the
answer can be 0xA700. Here the command set is looked at first, and a C-STORE data set
arriving below the reserve is read from the socket and dropped: no file, nothing held
in memory; the Storage SCP then answers 0xA700 Out of Resources with an Error Comment
(`refused_data_set`).
"""

from __future__ import annotations

import os
import struct
import tempfile
import uuid
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.values import convert_AE_string, convert_UI
from pynetdicom import _config, evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from pacs_server.errors import PacsError
from pacs_server.services.ingest import file_meta_bytes


def _data_set_follows(command_set: Dataset) -> bool:
    return bool(command_set.get("CommandDataSetType", 0x0101) != 0x0101)


class GatedMessage(DIMSEMessage):
    """A DIMSE message being received; a C-STORE-RQ refused by the gate becomes a
    `DiscardedStore`, any other message is upstream's."""

    gate: Callable[[], None]

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        """Upstream `decode_msg`, unless the last command fragment completes a
        C-STORE-RQ while the gate refuses data sets: then the command set is decoded
        as upstream does and the data set fragments are dropped.

        Upstream: on the last command fragment of a C-STORE-RQ creates the data set's
        temporary file (`NamedTemporaryFile`, the archive's .incoming) and writes
        every later fragment to it; nothing above the DUL can intervene before the
        whole data set is stored.
        Upstream change that removes this: an event (or callback) on the decoded
        command set of a C-STORE-RQ that may refuse its data set before it is written.
        """
        pdvs = getattr(primitive, "presentation_data_value_list", None) or []
        if primitive.__class__ is P_DATA:
            for index, (context_id, data) in enumerate(pdvs):
                if not data or data[0] & 3 != 3:
                    continue
                refusal = self._refusal(data)
                if refusal is None:
                    break
                # Earlier fragments of this primitive are command fragments too.
                for _cx, earlier in pdvs[:index]:
                    self.encoded_command_set.write(earlier[1:])
                self.encoded_command_set.write(data[1:])
                self.context_id = context_id
                self.command_set = decode(self.encoded_command_set, True, True)
                self.__class__ = DiscardedStore  # type: ignore[assignment]
                cast(DiscardedStore, self).refusal = refusal
                rest = P_DATA()
                rest.presentation_data_value_list = pdvs[index + 1:]
                return self.decode_msg(rest, assoc)
        return super().decode_msg(primitive, assoc)

    def _refusal(self, last_fragment: bytes) -> str | None:
        """Why the data set of the command set ending in the PDV `last_fragment` (its
        control header byte first) must not be received, or None (the gate is asked
        first: one statvfs, nothing decoded or copied)."""
        try:
            self.gate()
            return None
        except PacsError as exc:
            reason = str(exc)
        try:
            command = decode(BytesIO(self.encoded_command_set.getvalue() + last_fragment[1:]),
                             True, True)
            is_store = int(command.CommandField) == 0x0001 and _data_set_follows(command)
        except Exception:  # upstream reports a malformed command set
            return None
        return reason if is_store else None


class DiscardedStore(C_STORE_RQ):
    """A C-STORE-RQ whose data set fragments are read and dropped."""

    refusal: str

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        for _cx, data in getattr(primitive, "presentation_data_value_list", None) or []:
            if data and data[0] & 3 == 2:       # the last data set fragment
                return True
        return False

    def message_to_primitive(self) -> Any:
        # Upstream maps the message to its primitive by class name: be C_STORE_RQ again.
        refusal = self.refusal
        self.__class__ = C_STORE_RQ  # type: ignore[assignment]
        primitive = self.message_to_primitive()
        primitive.refused_data_set = refusal
        return primitive


def refused_data_set(request: Any) -> str | None:
    """Why a C-STORE request's data set was dropped unread (None: it was received)."""
    return getattr(request, "refused_data_set", None)


# ------------------------------------------------------------------ the common case

_HEAD = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
# The elements a C-STORE-RQ command set may hold (PS3.7 9.3.1.1) and their VRs.
_STORE_RQ: dict[int, tuple[str, str]] = {
    0x00000000: ("CommandGroupLength", "UL"),
    0x00000002: ("AffectedSOPClassUID", "UI"),
    0x00000100: ("CommandField", "US"),
    0x00000110: ("MessageID", "US"),
    0x00000700: ("Priority", "US"),
    0x00000800: ("CommandDataSetType", "US"),
    0x00001000: ("AffectedSOPInstanceUID", "UI"),
    0x00001030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x00001031: ("MoveOriginatorMessageID", "US"),
}
# What upstream's message_to_primitive copies: the elements the primitive has.
_PRIMITIVE_FIELDS = tuple(kw for kw, _vr in _STORE_RQ.values() if hasattr(C_STORE(), kw))
_REQUIRED = {"AffectedSOPClassUID", "AffectedSOPInstanceUID", "MessageID", "Priority"}


def store_command(raw: bytes) -> dict[str, Any] | None:
    """The elements of a C-STORE-RQ command set with a data set, each value as pydicom
    decodes it; None for anything else (another command, another element, an empty,
    odd or multi-valued value), which upstream decodes."""
    out: dict[str, Any] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem, length = _HEAD.unpack_from(raw, pos)
        spec = _STORE_RQ.get(group << 16 | elem)
        pos += 8
        if spec is None or length == 0 or pos + length > end or spec[0] in out:
            return None
        keyword, vr = spec
        value = raw[pos:pos + length]
        pos += length
        if vr == "US" or vr == "UL":
            if length != (2 if vr == "US" else 4):
                return None
            out[keyword] = (_U16 if vr == "US" else _U32).unpack(value)[0]
            continue
        text = convert_UI(value, True) if vr == "UI" else convert_AE_string(value, True)
        if isinstance(text, MultiValue) or not text:
            return None
        out[keyword] = text
    if out.get("CommandField") != 0x0001 or out.get("CommandDataSetType", 0x0101) == 0x0101 \
            or not _REQUIRED <= out.keys():
        return None
    return out


class ReceiveFile:
    """The receive file of one data set: as much of a file object as pynetdicom's
    Storage SCP and the association tracker use (`name`, `close()`)."""

    def __init__(self, directory: str) -> None:
        self.name = os.path.join(directory, f"{uuid.uuid4().hex}.dcm")
        # 0o644 like the archive's files: the archive may keep this very file.
        self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                           0o644)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class ReceivingMessage(GatedMessage):
    """A DIMSE message being received: a plain C-STORE-RQ becomes a `ReceivedStore`,
    anything else is `GatedMessage`'s (and so upstream's)."""

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        """Receive a C-STORE-RQ's data set straight into its receive file.

        Upstream: see the module docstring (pydicom decode of the command set, a
        NamedTemporaryFile, pydicom's File Meta, a copy and a flush per fragment).
        Upstream change that would remove this: a receive callback for C-STORE data
        sets, and a cheaper command set decode.
        """
        if primitive.__class__ is P_DATA and assoc is not None:
            pdvs = primitive.presentation_data_value_list
            for index, (context_id, data) in enumerate(pdvs):
                if not data or data[0] & 3 != 3:
                    continue
                command = b"".join([self.encoded_command_set.getvalue(),
                                    *(d[1:] for _cx, d in pdvs[:index]), data[1:]])
                if not self._receive(command, context_id, assoc):
                    break
                rest = P_DATA()
                rest.presentation_data_value_list = pdvs[index + 1:]
                return self.decode_msg(rest, assoc)
        return super().decode_msg(primitive, assoc)

    def _receive(self, command: bytes, context_id: int, assoc: Any) -> bool:
        """Become the `ReceivedStore` of `command`, its receive file open with the
        archive's File Meta; False leaves the message to upstream (and the gate)."""
        if not _config.STORE_RECV_CHUNKED_DATASET:
            return False        # upstream then receives into memory
        fields = store_command(command)
        cx = assoc._accepted_cx.get(context_id)
        if fields is None or cx is None or assoc.get_handlers(evt.EVT_DIMSE_RECV):
            return False        # EVT_DIMSE_RECV handlers read the decoded command set
        try:
            self.gate()
        except PacsError:
            return False        # GatedMessage drops the data set
        meta = file_meta_bytes(fields["AffectedSOPClassUID"], fields["AffectedSOPInstanceUID"],
                               str(cx.transfer_syntax[0]), assoc.requestor.ae_title)
        handle = ReceiveFile(tempfile.gettempdir())
        try:
            handle.write(meta)
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
        self.__class__ = ReceivedStore  # type: ignore[assignment]
        self.context_id = context_id
        store = cast(ReceivedStore, self)
        store.fields = fields
        # the names pynetdicom's cleanup uses
        self._data_set_file = handle  # type: ignore[assignment]
        self._data_set_path = Path(handle.name)
        return True


class ReceivedStore(C_STORE_RQ):
    """A C-STORE-RQ whose data set fragments go straight into its receive file."""

    fields: dict[str, Any]

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        """Append each data set fragment; True after the last one.

        A command fragment here (after the command set ended) breaks PS3.8 E.2: it
        raises, and the state machine aborts the association (transport.py).
        """
        if primitive.__class__ is not P_DATA:
            return False
        handle = cast(ReceiveFile, self._data_set_file)
        for _cx, data in primitive.presentation_data_value_list:
            header = data[0]
            if header & 1:
                raise ValueError("command fragment inside a C-STORE data set")
            handle.write(memoryview(data)[1:])
            if header & 2:
                handle.close()
                return True
        return False

    def message_to_primitive(self) -> Any:
        """The C-STORE primitive of upstream's `message_to_primitive`, set from the
        decoded fields through the same setters."""
        primitive = C_STORE()
        for keyword in _PRIMITIVE_FIELDS:
            if keyword in self.fields:
                setattr(primitive, keyword, self.fields[keyword])
        primitive.DataSet = BytesIO()   # upstream's `data_set`, empty with chunked receive
        primitive._context_id = self.context_id
        primitive._dataset_path = self._data_set_path
        primitive._dataset_file = self._data_set_file
        return primitive


class GatedDimse(DIMSEServiceProvider):
    """The acceptor's DIMSE provider: each message is received as a `ReceivingMessage`."""

    gate: Callable[[], None]

    def receive_primitive(self, primitive: Any) -> None:
        """Upstream's, with the next message started as a `ReceivingMessage` (upstream
        starts a plain `DIMSEMessage` when none is in progress)."""
        if self.message is None:
            message = DIMSEMessage()            # upstream's __init__ keys on the class name
            message.__class__ = ReceivingMessage
            cast(ReceivingMessage, message).gate = self.gate
            self.message = message
        super().receive_primitive(primitive)


def _no_gate() -> None:
    return None


def receive_stores(dimse: DIMSEServiceProvider, gate: Callable[[], None] | None) -> None:
    """Set the gate (raising PacsError to refuse) a `GatedDimse` asks before each
    C-STORE data set is written."""
    cast(GatedDimse, dimse).gate = gate or _no_gate


# ------------------------------------------------------------------ P-DATA-TF PDUs

class ReadPData(P_DATA_TF):
    """A received P-DATA-TF PDU whose PDVs were read without item objects."""

    def __init__(self, pdvs: list[tuple[int, bytes]]) -> None:
        super().__init__()
        self._pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list = []
        primitive.presentation_data_value_list.extend(self._pdvs)   # tuples, as upstream's
        return primitive


def read_pdata(assoc: Any, raw: bytes) -> ReadPData | None:
    """The P-DATA-TF PDU `raw` (PS3.8 9.3.5: PDV items of item length, context ID and
    data) as a `ReadPData`, when nothing observes received PDUs but pynetdicom's own
    handler (which does nothing for a P-DATA-TF); None for anything else, or items
    that do not fill the PDU exactly (upstream then decodes, and reports them).

    Upstream (`DULServiceProvider._decode_pdu`, DT-2): EVT_DATA_RECV and EVT_PDU_RECV
    each build an Event, `P_DATA_TF.decode` makes one item object per PDV and
    `to_primitive` copies them into the P-DATA: two PDUs per small instance.
    Upstream change that would remove this: a PDV list decoded straight into the
    primitive, and no events built when only the standard handlers are bound.
    """
    if raw[:1] != b"\x04" or assoc.get_handlers(evt.EVT_DATA_RECV) or not all(
            h[0] is standard_pdu_recv_handler for h in assoc.get_handlers(evt.EVT_PDU_RECV)):
        return None
    pdvs: list[tuple[int, bytes]] = []
    pos, end = 6, len(raw)
    while pos < end:
        if end - pos < 5:
            return None
        (length,) = _U32BE.unpack_from(raw, pos)
        if length < 1 or pos + 4 + length > end:
            return None
        pdvs.append((raw[pos + 4], raw[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return ReadPData(pdvs)


_U32BE = struct.Struct(">I")
