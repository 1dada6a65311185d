"""C-STORE responses on the wire are, byte for byte, the P-DATA-TF PDUs pynetdicom's own
Storage SCP sends for the same response (dicom/storage_scp.py encodes the command set
directly and sends it as finished PDUs on the event-driven transport): success and the
failures our handler answers with an Error Comment, fragmented or not, on both
transports."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from pacs_server.config import Config
from support.instances import DicomFiles, encode, new_dataset
from support.scu import SUCCESS, Scu, contexts_for, send
from support.server import RunningServer

DUPLICATE, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0111, 0xA700, 0xA900, 0xC000


def upstream_pdus(rsp: Any, msg_id: int, path: Path, cx_id: int, max_pdu: int) -> list[bytes]:
    """What pynetdicom's `StorageServiceClass.SCP` and DIMSE provider send for the
    response `rsp` (a status Dataset) to the C-STORE-RQ of `path`."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = msg_id
    primitive.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    primitive.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    primitive.Status = int(rsp.Status)
    if "ErrorComment" in rsp:
        primitive.ErrorComment = rsp.ErrorComment
    msg = C_STORE_RSP()
    msg.primitive_to_message(primitive)
    return [bytes(P_DATA_TF(p).encode()) for p in msg.encode_msg(cx_id, max_pdu)]


def store_on_the_wire(scu: Scu, port: int, paths: list[Path], max_pdu: int) -> list[int]:
    """C-STORE each file over one association; asserts each response's PDUs are
    upstream's; returns the statuses."""
    received: list[bytes] = []

    def on_data(event: Any) -> None:
        if event.data[:1] == b"\x04":
            received.append(bytes(event.data))

    statuses = []
    with scu.associate(port, contexts_for(paths), max_pdu=max_pdu,
                       evt_handlers=[(evt.EVT_DATA_RECV, on_data)]) as assoc:
        for path in paths:
            received.clear()
            result = send(assoc, path)
            sop_class = pydicom.dcmread(path, stop_before_pixels=True).file_meta \
                .MediaStorageSOPClassUID
            (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
            rsp = pydicom.Dataset()
            rsp.Status = result.status
            if result.comment is not None:
                rsp.ErrorComment = result.comment
            expected = upstream_pdus(rsp, 1, path, cx.context_id, max_pdu)  # Message ID 1: send()
            assert received == expected, (hex(result.status), result.comment)
            statuses.append(result.status)
    return statuses


@pytest.mark.parametrize("transport", ["events", "stock"])
@pytest.mark.parametrize("max_pdu", [0, 16384, 60])
async def test_store_responses_are_upstreams_bytes(
        transport: str, max_pdu: int, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], scu: Scu, dicom_files: DicomFiles) -> None:
    srv = await start_server(make_cfg({"server.transport": transport,
                                       "storage.duplicate_policy": "reject"}))
    good = dicom_files.fresh("CT_small.dcm")
    no_sop = new_dataset()
    del no_sop.SOPInstanceUID
    paths = [good, dicom_files.fresh("MR_small.dcm"), good,
             dicom_files.raw(b"not a dataset at all", sop_class="1.2.840.10008.5.1.4.1.1.2"),
             dicom_files.raw(encode(no_sop), sop_class="1.2.840.10008.5.1.4.1.1.2")]
    statuses = await asyncio.to_thread(store_on_the_wire, scu, srv.port, paths, max_pdu)
    assert statuses == [SUCCESS, SUCCESS, DUPLICATE, CANNOT_UNDERSTAND, DOES_NOT_MATCH]


@pytest.mark.parametrize("transport", ["events", "stock"])
async def test_out_of_resources_is_upstreams_bytes(
        transport: str, start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config], scu: Scu, dicom_files: DicomFiles,
        tmp_path: Path) -> None:
    reserve = shutil.disk_usage(tmp_path).free + (1 << 40)
    srv = await start_server(make_cfg({"server.transport": transport,
                                       "storage.min_free_bytes": reserve}))
    paths = [dicom_files.fresh("CT_small.dcm")]
    statuses = await asyncio.to_thread(store_on_the_wire, scu, srv.port, paths, 60)
    assert statuses == [OUT_OF_RESOURCES]
