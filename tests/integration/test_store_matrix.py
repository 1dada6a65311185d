"""C-STORE over the network for every transfer syntax and SOP class we have files for.

Each file goes out in its own transfer syntax and must come back byte for byte: the
archive keeps the dataset exactly as received, behind our own File Meta.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from support.archive import (
    archived_files,
    incoming_files,
    index_counts,
    indexed_instance,
    query_index,
)
from support.instances import DicomFiles, dataset_bytes, file_meta
from support.scu import SCU_AE, Scu
from support.server import RunningServer

# (pydicom file, what it covers). Each gets fresh UIDs, keeping its transfer syntax.
MATRIX = [
    ("CT_small.dcm", "CT, Explicit VR Little Endian"),
    ("MR_small.dcm", "MR, Explicit VR Little Endian"),
    ("MR_small_implicit.dcm", "MR, Implicit VR Little Endian"),
    ("MR_small_bigendian.dcm", "MR, Explicit VR Big Endian"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC colour, Explicit VR Big Endian, odd length"),
    ("MR_small_RLE.dcm", "MR, RLE Lossless"),
    ("SC_rgb_rle.dcm", "SC colour, RLE Lossless"),
    ("rtdose_rle_1frame.dcm", "RT Dose, RLE Lossless"),
    ("MR_small_jp2klossless.dcm", "MR, JPEG 2000 Lossless"),
    ("JPEG2000.dcm", "NM/SC, JPEG 2000"),
    ("693_J2KI.dcm", "CT, JPEG 2000"),
    ("examples_jpeg2k.dcm", "US, JPEG 2000 Lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR, JPEG-LS Lossless"),
    ("JPEGLSNearLossless_08.dcm", "SC, JPEG-LS Near-Lossless"),
    ("SC_rgb_jls_lossy_line.dcm", "SC colour, JPEG-LS Near-Lossless"),
    ("SC_rgb_jpeg_dcmtk.dcm", "SC colour, JPEG Baseline"),
    ("examples_ybr_color.dcm", "US multi-frame colour, JPEG Baseline"),
    ("JPEG-lossy.dcm", "SC, JPEG Extended"),
    ("JPGExtended.dcm", "SC, JPEG Extended (same UIDs as JPEG-lossy upstream)"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC colour, JPEG Lossless SV1"),
    ("image_dfl.dcm", "SC, Deflated Explicit VR Little Endian"),
    ("rtplan.dcm", "RT Plan, Implicit VR"),
    ("rtdose.dcm", "RT Dose, Implicit VR, multi-frame"),
    ("rtstruct.dcm", "RT Structure Set, no File Meta upstream"),
    ("test-SR.dcm", "Comprehensive SR"),
    ("reportsi.dcm", "Basic Text SR"),
    ("waveform_ecg.dcm", "12-lead ECG waveform, header > 256 KiB"),
    ("liver_1frame.dcm", "Segmentation"),
]

CHARSET_FILES = ["chrArab.dcm", "chrFren.dcm", "chrFrenMulti.dcm", "chrGerm.dcm",
                 "chrGreek.dcm", "chrH31.dcm", "chrH32.dcm", "chrHbrw.dcm", "chrI2.dcm",
                 "chrJapMulti.dcm", "chrJapMultiExplicitIR6.dcm", "chrKoreanMulti.dcm",
                 "chrRuss.dcm", "chrX1.dcm", "chrX2.dcm"]


def check_archived(srv: RunningServer, sent: Path, calling_ae: str = SCU_AE) -> Path:
    """The sent file is indexed and archived with its dataset bytes unchanged."""
    meta = file_meta(sent)
    uid = str(meta.MediaStorageSOPInstanceUID)
    row = indexed_instance(srv.db, uid)
    assert row is not None, f"{sent.name}: no index row"
    stored = srv.archive / row["path"]
    assert stored.is_file(), f"{sent.name}: indexed but no file at {row['path']}"
    assert row["transfer_syntax_uid"] == meta.TransferSyntaxUID
    assert row["sop_class_uid"] == meta.MediaStorageSOPClassUID
    assert row["size"] == stored.stat().st_size
    assert dataset_bytes(stored) == dataset_bytes(sent), f"{sent.name}: dataset changed"
    stored_meta = file_meta(stored)
    assert stored_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert stored_meta.MediaStorageSOPInstanceUID == uid
    assert stored_meta.MediaStorageSOPClassUID == meta.MediaStorageSOPClassUID
    assert stored_meta.SourceApplicationEntityTitle == calling_ae
    # and the archived file is a valid Part-10 file for an independent reader
    assert pydicom.dcmread(stored).SOPInstanceUID == uid
    return stored


@pytest.mark.parametrize("name", [m[0] for m in MATRIX], ids=[m[0] for m in MATRIX])
async def test_store_in_own_transfer_syntax(server: RunningServer, scu: Scu,
                                            dicom_files: DicomFiles, name: str) -> None:
    sent = dicom_files.fresh(name)
    (result,) = await scu.astore(server.port, [sent])
    assert result.ok, f"{name}: status 0x{result.status:04X} {result.comment}"
    check_archived(server, sent)
    counts = index_counts(server.db)
    assert (counts["patients"], counts["studies"], counts["series"], counts["instances"]) == (
        1, 1, 1, 1)
    root = server.archive
    assert len(archived_files(root)) == 1
    assert incoming_files(root) == []


async def test_character_sets(server: RunningServer, scu: Scu, dicom_files: DicomFiles) -> None:
    """Every charset file is stored; names are indexed decoded with their charset."""
    sent = [dicom_files.fresh(name) for name in CHARSET_FILES]
    results = await scu.astore(server.port, sent)
    assert [r.status for r in results] == [0] * len(sent)
    for path in sent:
        check_archived(server, path)
    names = {r["patient_id"]: r["patient_name"]
             for r in query_index(server.db, "SELECT patient_id, patient_name FROM patients")}
    for path in sent:
        ds = pydicom.dcmread(path)
        assert names[str(ds.PatientID)] == str(ds.PatientName), path.name
    assert names["X1EXAMPLE"] == "Wang^XiaoDong=王^小東"
    assert names["SCSRUSS"] == "Люкceмбypг"


async def test_many_instances_of_one_series(server: RunningServer, scu: Scu,
                                            dicom_files: DicomFiles) -> None:
    """Three SOP classes into one study: every level is counted once."""
    first = dicom_files.fresh("CT_small.dcm")
    ct = pydicom.dcmread(first)
    same_series = [dicom_files.fresh("CT_small.dcm", new_study=False,
                                     StudyInstanceUID=ct.StudyInstanceUID,
                                     SeriesInstanceUID=ct.SeriesInstanceUID) for _ in range(3)]
    other_series = dicom_files.fresh("MR_small.dcm", new_study=False,
                                     StudyInstanceUID=ct.StudyInstanceUID,
                                     PatientID=ct.PatientID)
    results = await scu.astore(server.port, [first, *same_series, other_series])
    assert all(r.ok for r in results)
    counts = index_counts(server.db)
    assert (counts["patients"], counts["studies"], counts["series"], counts["instances"]) == (
        1, 1, 2, 5)
    (study,) = query_index(server.db, "SELECT num_series, num_instances, modalities FROM studies")
    series = dict(query_index(server.db, "SELECT modality, num_instances FROM series"))
    received_from = {r[0] for r in query_index(server.db, "SELECT source_ae FROM instances")}
    assert tuple(study) == (2, 5, "CT\\MR")
    assert series == {"CT": 4, "MR": 1}
    assert received_from == {SCU_AE}
