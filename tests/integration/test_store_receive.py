"""C-STORE data sets received straight into their archive file (dicom/receive.py).

The receive side writes each data set behind the File Meta the archive keeps, and the
archive keeps that very file when the data set names the instance the request named;
otherwise it copies it behind the File Meta of the data set's own UIDs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from pacs_server.config import Config
from pacs_server.services.ingest import file_meta_bytes
from support.archive import archived_files, incoming_files, index_rows, indexed_path
from support.instances import DicomFiles, dataset_bytes, file_meta
from support.scu import SCU_AE, SUCCESS, Scu


def archived_as(app: Any, uid: str, source: Path) -> bytes:
    """What the archive should hold for `source` stored as `uid`: our File Meta, then
    the data set bytes exactly as sent."""
    meta = file_meta(source)
    return file_meta_bytes(str(meta.MediaStorageSOPClassUID), uid,
                           str(meta.TransferSyntaxUID), SCU_AE) + dataset_bytes(source)


async def test_each_syntax_is_archived_byte_for_byte_and_nothing_stays_behind(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config], scu: Scu,
        dicom_files: DicomFiles) -> None:
    app = await start_server(make_cfg({}))
    sources = [dicom_files.fresh(name) for name in (
        "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
        "image_dfl.dcm")]
    results = await scu.astore(app.port, sources)
    assert [r.status for r in results] == [SUCCESS] * len(sources)
    for source in sources:
        uid = str(file_meta(source).MediaStorageSOPInstanceUID)
        stored = indexed_path(app.archive, app.db, uid)
        assert stored is not None
        assert stored.read_bytes() == archived_as(app, uid, source), source.name
    assert incoming_files(app.archive) == []
    assert len(archived_files(app.archive)) == len(sources)


async def test_a_request_naming_another_instance_is_archived_under_the_data_sets_uid(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config], scu: Scu,
        dicom_files: DicomFiles) -> None:
    # pynetdicom sends a file's request with the UID its File Meta names, so a File
    # Meta that disagrees with the data set makes the request name another instance.
    source = dicom_files.fresh("CT_small.dcm")
    ds = pydicom.dcmread(source)
    real = str(ds.SOPInstanceUID)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(source, enforce_file_format=True)
    app = await start_server(make_cfg({}))
    assert [r.status for r in await scu.astore(app.port, [source])] == [SUCCESS]
    assert list(index_rows(app.db)) == [real]
    stored = indexed_path(app.archive, app.db, real)
    assert stored is not None
    assert stored.read_bytes() == archived_as(app, real, source)
    assert incoming_files(app.archive) == []
