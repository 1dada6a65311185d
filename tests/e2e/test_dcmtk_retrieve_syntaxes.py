"""dcmtk getscu/movescu of every transfer syntax of the store matrix: byte for byte when
the requester accepts the stored syntax; converted for a destination that takes only
Explicit VR Little Endian (an instance stored as Big Endian among them: offered as
stored and as Little Endian, it must go out in whatever the destination accepted)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

from support.archive import indexed_path
from support.config import FAST_STORAGE, peer, server_config
from support.dcmtk import QR_TOOLS, Storescp, getscu, movescu, require_dcmtk
from support.instances import DicomFiles, dataset_bytes
from support.scp import start_listener
from support.scu import Scu
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk(*QR_TOOLS)

MATRIX = [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_08.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm",
    "SC_rgb_jpeg_gdcm.dcm", "image_dfl.dcm", "rtplan.dcm", "test-SR.dcm",
]
# getscu's option to propose (and so accept) each stored syntax for its Storage SCP role.
GETSCU_ACCEPTS = {
    "1.2.840.10008.1.2": "+xi", "1.2.840.10008.1.2.1": "+xe", "1.2.840.10008.1.2.2": "+xb",
    "1.2.840.10008.1.2.1.99": "+xd", "1.2.840.10008.1.2.5": "+xr",
    "1.2.840.10008.1.2.4.90": "+xv", "1.2.840.10008.1.2.4.91": "+xw",
    "1.2.840.10008.1.2.4.80": "+xt", "1.2.840.10008.1.2.4.81": "+xu",
    "1.2.840.10008.1.2.4.50": "+xy", "1.2.840.10008.1.2.4.51": "+xx",
    "1.2.840.10008.1.2.4.70": "+xs",
}
# What the Explicit-only destination must receive with its pixels intact.
CONVERTED = ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
             "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "image_dfl.dcm"]


class ExplicitOnlyScp:
    """A Storage SCP that accepts every SOP class it is offered, in Explicit VR Little
    Endian only (as Orthanc does by default for a Big Endian proposal)."""

    def __init__(self, sop_classes: list[str]) -> None:
        self.received: dict[str, tuple[str, Dataset]] = {}
        self._lock = threading.Lock()
        ae = AE(ae_title="EXPLICIT")
        for uid in sorted(set(sop_classes)):
            ae.add_supported_context(uid, [ExplicitVRLittleEndian])
        self.server = start_listener(ae, ("127.0.0.1", 0),
                                     evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = (str(event.context.transfer_syntax), ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@dataclass
class Archive:
    server: RunningServer
    root: Path
    stored: dict[str, tuple[Dataset, Path]]     # matrix name → (sent dataset, archived file)
    dest: Storescp
    explicit: ExplicitOnlyScp


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    require_dcmtk(QR_TOOLS)
    root = tmp_path_factory.mktemp("retrieve-syntaxes")
    files = DicomFiles(root / "send")
    sent = {name: files.fresh(name) for name in MATRIX}
    datasets = {name: pydicom.dcmread(p, stop_before_pixels=True) for name, p in sent.items()}
    dest = Storescp(root / "dest", ae_title="DEST")
    explicit = ExplicitOnlyScp([str(ds.SOPClassUID) for ds in datasets.values()])
    srv = RunningServer(server_config(root / "server", {**FAST_STORAGE, "peers": [
        peer("DEST", dest.port), peer("EXPLICIT", explicit.port)]}))
    try:
        srv.start()
        results = Scu().store(srv.port, list(sent.values()))
        assert [r.status for r in results] == [0] * len(sent)
        stored = {}
        for name, ds in datasets.items():
            path = indexed_path(srv.archive, srv.db, str(ds.SOPInstanceUID))
            assert path is not None
            stored[name] = (ds, path)
        yield Archive(srv, root, stored, dest, explicit)
    finally:
        srv.stop()
        dest.stop()
        explicit.stop()


@pytest.mark.parametrize("name", MATRIX)
def test_movescu_sends_the_stored_bytes(archive: Archive, name: str) -> None:
    ds, stored = archive.stored[name]
    result = movescu(archive.server.port, "STUDY",
                     [f"StudyInstanceUID={ds.StudyInstanceUID}"], "DEST")
    assert result.final_status == 0x0000, result.output[-3000:]
    received = archive.dest.files()[str(ds.SOPInstanceUID)]
    assert dataset_bytes(received) == dataset_bytes(stored), name
    assert (pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("name", MATRIX)
def test_getscu_receives_the_stored_bytes(archive: Archive, name: str, tmp_path: Path) -> None:
    """getscu proposes one context per storage class; for a compressed syntax it offers
    that syntax first and receives the stored bytes. For the uncompressed family it
    always proposes Explicit VR Little Endian with the others in the same context, the
    acceptor (we) picks one per context (PS3.8 9.3.3.2), and we pick Explicit: then an
    Implicit, Big Endian or Deflated instance arrives converted, with the same values."""
    ds, stored = archive.stored[name]
    syntax = str(pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    result = getscu(archive.server.port, "STUDY",
                    [f"StudyInstanceUID={ds.StudyInstanceUID}"], tmp_path / "got",
                    extra=[GETSCU_ACCEPTS[syntax]])
    assert result.final_status == 0x0000, result.output[-3000:]
    (received,) = [p for p in (tmp_path / "got").iterdir() if p.is_file()]
    got = pydicom.dcmread(received)
    if syntax in UNCOMPRESSED_CONVERTED:
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        original = pydicom.dcmread(stored)
        assert _values(got) == _values(original), name
        if "PixelData" in original:
            assert np.array_equal(got.pixel_array, original.pixel_array), name
        return
    assert dataset_bytes(received) == dataset_bytes(stored), name


UNCOMPRESSED_CONVERTED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _values(ds: Dataset) -> dict[int, str]:
    """Every element but the pixel data, as comparable text."""
    return {int(e.tag): repr(e.value) for e in ds.iterall()
            if e.tag != 0x7FE00010 and e.VR not in ("OB", "OW", "UN")}


@pytest.mark.parametrize("name", CONVERTED)
def test_movescu_to_an_explicit_only_destination(archive: Archive, name: str) -> None:
    ds, stored = archive.stored[name]
    result = movescu(archive.server.port, "STUDY",
                     [f"StudyInstanceUID={ds.StudyInstanceUID}"], "EXPLICIT")
    assert result.final_status == 0x0000, result.output[-3000:]
    syntax, got = archive.explicit.received[str(ds.SOPInstanceUID)]
    assert syntax == ExplicitVRLittleEndian
    got.file_meta = pydicom.dataset.FileMetaDataset()
    got.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, pydicom.dcmread(stored).pixel_array), name
