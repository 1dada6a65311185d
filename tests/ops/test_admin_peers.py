"""A C-MOVE destination added through the admin API is used at once, and dropped at once."""

from __future__ import annotations

import asyncio

import pydicom
import pytest

from support.dcmtk import movescu
from support.http import base_url, http_call
from support.instances import DicomFiles
from support.scp import StorageScp
from support.scu import SUCCESS, Scu
from support.server import RunningServer

MOVE_DESTINATION_UNKNOWN = 0xA801


@pytest.mark.dcmtk
async def test_api_peer_is_a_move_destination_at_once(ops_server: RunningServer,
                                                      dicom_files: DicomFiles) -> None:
    base = base_url(ops_server)
    sent = dicom_files.fresh("CT_small.dcm", PatientID="MOVE1")
    assert (await Scu().astore(ops_server.port, [sent]))[0].status == SUCCESS
    dest = StorageScp("APIPEER")
    try:
        # A STUDY-level retrieve names its study (PS3.4 C.4.2.1.4.1).
        study = pydicom.dcmread(sent, stop_before_pixels=True).StudyInstanceUID
        keys = [f"StudyInstanceUID={study}"]
        before = await asyncio.to_thread(movescu, ops_server.port, "STUDY", keys, "APIPEER")
        assert before.final_status == MOVE_DESTINATION_UNKNOWN
        status, body = await http_call(base, "POST", "/api/peers", body={
            "ae_title": "APIPEER", "host": "127.0.0.1", "port": dest.port})
        assert (status, body["origin"]) == (200, "api")
        moved = await asyncio.to_thread(movescu, ops_server.port, "STUDY", keys, "APIPEER")
        assert moved.final_status == SUCCESS
        assert len(dest.received) == 1
        assert (await http_call(base, "DELETE", "/api/peers",
                                body={"ae_title": "APIPEER"}))[0] == 200
        after = await asyncio.to_thread(movescu, ops_server.port, "STUDY", keys, "APIPEER")
        assert after.final_status == MOVE_DESTINATION_UNKNOWN
    finally:
        dest.stop()
