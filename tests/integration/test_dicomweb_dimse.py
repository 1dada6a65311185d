"""DICOMweb and DIMSE share one archive: an instance sent by dcmtk's storescu is found by
QIDO-RS and retrieved by WADO-RS; one stored by STOW-RS (dicomweb-client) is found by
findscu and retrieved by getscu, byte for byte."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from pacs_server.config import Config
from support.archive import indexed_path
from support.config import SERVER_AE
from support.dcmtk import QR_TOOLS, Dcmtk, findscu, getscu
from support.instances import DicomFiles, bundled_dataset, dataset_bytes
from support.scu import SCU_AE
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk(*QR_TOOLS)


@pytest.fixture
async def web_server(start_server: Callable[..., Awaitable[RunningServer]],
                     make_cfg: Callable[..., Config]) -> RunningServer:
    return await start_server(make_cfg({"monitoring.metrics_port": 0}))


def _client(srv: RunningServer) -> DICOMwebClient:
    return DICOMwebClient(url=f"http://127.0.0.1:{srv.http_port}/dicom-web")


async def test_c_store_then_qido_and_wado(web_server: RunningServer, dcmtk: Dcmtk,
                                          dicom_files: DicomFiles) -> None:
    path = dicom_files.fresh("CT_small.dcm")
    store = await asyncio.to_thread(
        subprocess.run, [dcmtk.tool("storescu"), "-aet", SCU_AE, "-aec", SERVER_AE,
                         "127.0.0.1", str(web_server.port), str(path)],
        env=dcmtk.env, capture_output=True, text=True, timeout=30)
    assert store.returncode == 0, store.stderr
    sent = dcmread(path)
    client = _client(web_server)
    (study,) = await asyncio.to_thread(client.search_for_studies,
                                       search_filters={"PatientID": sent.PatientID})
    assert study["0020000D"]["Value"] == [sent.StudyInstanceUID]
    (instance,) = await asyncio.to_thread(client.search_for_instances,
                                          str(sent.StudyInstanceUID))
    assert instance["00080018"]["Value"] == [sent.SOPInstanceUID]
    got = await asyncio.to_thread(client.retrieve_instance, str(sent.StudyInstanceUID),
                                  str(sent.SeriesInstanceUID), str(sent.SOPInstanceUID))
    assert got.PixelData == sent.PixelData
    assert got.PatientName == sent.PatientName


async def test_stow_then_findscu_and_getscu(web_server: RunningServer, dcmtk: Dcmtk,
                                            tmp_path: Path) -> None:
    ds = bundled_dataset("MR_small_jp2klossless.dcm", PatientID="STOW-1")
    client = _client(web_server)
    result = await asyncio.to_thread(client.store_instances, [ds])
    assert [str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence] == \
        [str(ds.SOPInstanceUID)]
    found = await asyncio.to_thread(
        findscu, web_server.port, "STUDY", ["PatientID=STOW-1", "StudyInstanceUID"],
        tmp_path / "find")
    assert found.returncode == 0, found.output[-2000:]
    assert [str(r.StudyInstanceUID) for r in found.responses] == [str(ds.StudyInstanceUID)]
    got = await asyncio.to_thread(
        getscu, web_server.port, "STUDY", [f"StudyInstanceUID={ds.StudyInstanceUID}"],
        tmp_path / "got", extra=["+xv"])      # propose the stored JPEG 2000 lossless first
    assert got.final_status == 0x0000, got.output[-3000:]
    (received,) = [p for p in (tmp_path / "got").iterdir() if p.is_file()]
    stored = indexed_path(web_server.archive, web_server.db, str(ds.SOPInstanceUID))
    assert stored is not None
    assert dataset_bytes(received) == dataset_bytes(stored)
