"""C-GET and C-MOVE send the stored file as it is, or convert it for a peer that takes
none of its stored syntax (dicom/transport.py, services/transcode.py).

Every file of the store matrix goes out byte for byte when the requester accepts the
stored syntax; requesters that accept only Explicit VR Little Endian, only Implicit, or
only JPEG 2000 Lossless receive pixel data equal to pydicom's decode of the stored file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from pacs_server.config import Config
from support.archive import indexed_path
from support.config import SERVER_AE, server_config
from support.instances import DicomFiles, dataset_bytes
from support.scu import Scu
from support.server import RunningServer

GET = StudyRootQueryRetrieveInformationModelGet

# The store matrix of test_store_matrix.py, less the files without pixel data or with
# more than one SOP class quirk that would not tell anything more here.
AS_STORED = [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "SC_rgb_small_odd_big_endian.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm",
    "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_08.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "image_dfl.dcm", "rtplan.dcm", "test-SR.dcm",
    "waveform_ecg.dcm",
]
# Files whose pixels a requester that takes only uncompressed data must still receive.
DECODED = [
    "CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_small_odd_big_endian.dcm",
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "MR_small_implicit.dcm",
]
LOSSY = ["SC_rgb_jpeg_dcmtk.dcm", "JPEGLSNearLossless_08.dcm"]


class Received:
    """What a C-GET requester's Storage SCP got: transfer syntax and dataset bytes."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    def handler(self, event: Any) -> int:
        # The server process-wide turns on pynetdicom's chunked receive, which this
        # in-process requester shares: the dataset then arrives as a file.
        path = getattr(event, "dataset_path", None)
        if path is not None:
            _, offset = split_dataset(path)
            data = Path(path).read_bytes()[offset:]
        else:
            data = event.encoded_dataset(include_meta=False)
        self.items.append((str(event.context.transfer_syntax), data))
        return 0x0000

    def dataset(self, i: int = 0) -> Dataset:
        ts, data = self.items[i]
        syntax = UID(ts)
        if syntax.is_deflated:
            import zlib
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        ds = read_dataset(DicomBytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        return ds


def c_get(port: int, study_uid: str, sop_class: str, syntaxes: Sequence[str]
          ) -> tuple[list[int], Received, Dataset | None]:
    """C-GET a study as a requester whose Storage SCP accepts only `syntaxes`."""
    received = Received()
    ae = AE(ae_title="GETSCU")
    ae.dimse_timeout = 30
    ae.add_requested_context(GET)
    ae.add_requested_context(sop_class, list(syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE,
                         ext_neg=[build_role(sop_class, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, received.handler)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    statuses: list[int] = []
    final: Dataset | None = None
    try:
        for status, ident in assoc.send_c_get(query, GET):
            statuses.append(int(status.Status))
            final = ident
    finally:
        assoc.release()
    return statuses, received, final


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module, instead of conftest's one per test: each test stores an
    instance of a new study and retrieves that study only, so none depends on what the
    others stored (a test that needs its own configuration starts its own server)."""
    srv = RunningServer(server_config(tmp_path_factory.mktemp("transcode"))).start()
    yield srv
    srv.stop()


async def stored_one(server: RunningServer, scu: Scu, dicom_files: DicomFiles,
                     name: str) -> tuple[Path, Dataset]:
    sent = dicom_files.fresh(name)
    (result,) = await scu.astore(server.port, [sent])
    assert result.ok, f"{name}: 0x{result.status:04X} {result.comment}"
    ds = pydicom.dcmread(sent)
    path = indexed_path(server.archive, server.db, str(ds.SOPInstanceUID))
    assert path is not None and path.is_file()
    return path, ds


@pytest.mark.parametrize("name", AS_STORED)
async def test_c_get_sends_the_stored_bytes(server: RunningServer, scu: Scu,
                                            dicom_files: DicomFiles, name: str) -> None:
    stored, ds = await stored_one(server, scu, dicom_files, name)
    syntax = str(pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    statuses, received, _ = await asyncio.to_thread(c_get, server.port, str(ds.StudyInstanceUID),
                                             str(ds.SOPClassUID), [syntax])
    assert statuses[-1] == 0x0000, statuses
    assert [ts for ts, _ in received.items] == [syntax]
    assert received.items[0][1] == dataset_bytes(stored), f"{name}: not byte for byte"


@pytest.mark.parametrize("target", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("name", DECODED)
async def test_c_get_to_an_uncompressed_only_requester(server: RunningServer, scu: Scu,
                                                       dicom_files: DicomFiles, name: str,
                                                       target: str) -> None:
    stored, ds = await stored_one(server, scu, dicom_files, name)
    statuses, received, _ = await asyncio.to_thread(c_get, server.port, str(ds.StudyInstanceUID),
                                             str(ds.SOPClassUID), [target])
    assert statuses[-1] == 0x0000, statuses
    assert [ts for ts, _ in received.items] == [target]
    got = received.dataset()
    original = pydicom.dcmread(stored)
    assert np.array_equal(got.pixel_array, original.pixel_array), name
    assert got.SOPInstanceUID == original.SOPInstanceUID
    if name in LOSSY:
        assert got.LossyImageCompression == "01"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_RLE.dcm"])
async def test_c_get_to_a_jpeg2000_lossless_only_requester(server: RunningServer, scu: Scu,
                                                           dicom_files: DicomFiles,
                                                           name: str) -> None:
    stored, ds = await stored_one(server, scu, dicom_files, name)
    statuses, received, _ = await asyncio.to_thread(c_get, server.port, str(ds.StudyInstanceUID),
                                             str(ds.SOPClassUID), [JPEG2000Lossless])
    assert statuses[-1] == 0x0000, statuses
    assert [ts for ts, _ in received.items] == [JPEG2000Lossless]
    got = received.dataset()
    assert np.array_equal(got.pixel_array, pydicom.dcmread(stored).pixel_array)
    assert "LossyImageCompression" not in got or got.LossyImageCompression == "00"


async def test_lossy_stays_lossy(server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> None:
    """A JPEG Baseline instance without Lossy Image Compression, decoded for an
    Explicit-only requester, is flagged 01 (PS3.3 C.7.6.1.1.5)."""
    sent = dicom_files.fresh("SC_rgb_jpeg_dcmtk.dcm")
    unflagged = pydicom.dcmread(sent)
    del unflagged.LossyImageCompression
    unflagged.save_as(sent)
    (result,) = await scu.astore(server.port, [sent])
    assert result.ok
    ds = pydicom.dcmread(sent)
    statuses, received, _ = await asyncio.to_thread(c_get, server.port, str(ds.StudyInstanceUID),
                                             str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    assert statuses[-1] == 0x0000
    assert received.dataset().LossyImageCompression == "01"


async def test_no_transcoding_fails_the_suboperation(start_server: Callable[..., Any],
                                                     make_cfg: Callable[..., Config],
                                                     scu: Scu,
                                                     dicom_files: DicomFiles) -> None:
    """retrieve.transcode off: an instance the requester cannot take in its stored
    syntax fails its sub-operation (all failed: 0xA702, with its UID listed)."""
    app = await start_server(make_cfg({"retrieve.transcode": False}))
    stored, ds = await stored_one(app, scu, dicom_files, "MR_small_jp2klossless.dcm")
    statuses, received, final = await asyncio.to_thread(c_get, app.port, str(ds.StudyInstanceUID),
                                                 str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    assert statuses[-1] == 0xA702
    assert received.items == []
    assert final is not None and final.FailedSOPInstanceUIDList == ds.SOPInstanceUID


async def test_big_endian_never_goes_out_as_big_endian_when_declined(
        server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> None:
    """Offered Big Endian and Explicit Little Endian, a requester that accepts the
    latter gets the instance converted, with the pixel values intact."""
    stored, ds = await stored_one(server, scu, dicom_files, "MR_small_bigendian.dcm")
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    statuses, received, _ = await asyncio.to_thread(c_get, server.port, str(ds.StudyInstanceUID),
                                             str(ds.SOPClassUID), [ExplicitVRLittleEndian])
    assert statuses[-1] == 0x0000
    got = received.dataset()
    assert np.array_equal(got.pixel_array, pydicom.dcmread(stored).pixel_array)
