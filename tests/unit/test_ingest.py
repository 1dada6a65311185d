"""services/ingest.py: parse a received file, validate it, build the index record."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from pacs_server import IMPLEMENTATION_CLASS_UID
from pacs_server.errors import DatasetMismatch, UnreadableDataset
from pacs_server.index.headers import decode_header
from pacs_server.services.dataset_check import check_dataset
from pacs_server.services.ingest import (
    INDEXED_TAGS,
    MAX_RAW_HEADER,
    build_record,
    dataset_offset,
    file_meta_bytes,
    read_record,
)
from support.instances import DicomFiles, encode, file_meta, new_dataset, write_part10


@pytest.fixture(autouse=True)
def _pydicom_warnings_as_in_production() -> Iterator[None]:
    # The server reads hostile input; pydicom warns about it (and the server must not
    # depend on those warnings being raised), as it does outside pytest.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        yield


def part10(tmp_path: Path, body: bytes, ts: str = ExplicitVRLittleEndian) -> Path:
    path = tmp_path / f"{generate_uid()}.dcm"
    write_part10(path, body, sop_class="1.2.840.10008.5.1.4.1.1.7",
                 sop_instance=generate_uid(), ts=ts)
    return path


def parse(path: Path, ts: str = ExplicitVRLittleEndian):  # type: ignore[no-untyped-def]
    with open(path, "rb") as fh:
        offset = dataset_offset(fh)
        return read_record(fh, offset, ts)


def test_dataset_offset_points_after_the_meta(tmp_path: Path) -> None:
    path = part10(tmp_path, b"BODY")
    with open(path, "rb") as fh:
        offset = dataset_offset(fh)
    assert path.read_bytes()[offset:] == b"BODY"


@pytest.mark.parametrize("content", [b"", b"short", b"\x00" * 200,
                                     b"\x00" * 128 + b"DICM" + b"\x02\x00\x01\x00OB" + b"\x00" * 8])
def test_dataset_offset_refuses_files_without_meta(content: bytes) -> None:
    with pytest.raises(UnreadableDataset):
        dataset_offset(io.BytesIO(content))


def test_file_meta_bytes_is_a_valid_part10_header() -> None:
    sop = generate_uid()
    header = file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", sop, ExplicitVRBigEndian, "MODALITY")
    assert header[:128] == b"\x00" * 128 and header[128:132] == b"DICM"
    assert dataset_offset(io.BytesIO(header)) == len(header)
    meta = pydicom.dcmread(io.BytesIO(header)).file_meta
    assert meta.MediaStorageSOPInstanceUID == sop
    assert meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    without = file_meta_bytes("1.2.3", sop, ExplicitVRLittleEndian, "")
    assert "SourceApplicationEntityTitle" not in pydicom.dcmread(io.BytesIO(without)).file_meta


@pytest.mark.parametrize("body", [
    b"",
    b"\xff" * 100,
    b"\x00" * 100,
    b"this is not dicom at all, just some text!!",
    bytes(range(256)) * 2,
    os.urandom(300),
], ids=["empty", "ff", "zeros", "text", "bytes", "random"])
def test_garbage_is_unreadable(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(UnreadableDataset):
        parse(part10(tmp_path, body))


def test_missing_sop_instance_uid_is_a_mismatch(tmp_path: Path) -> None:
    ds = new_dataset()
    del ds.SOPInstanceUID
    with pytest.raises(DatasetMismatch, match="SOPInstanceUID is missing"):
        parse(part10(tmp_path, encode(ds)))


@pytest.mark.parametrize(("ts", "header_ts"), [
    (ExplicitVRLittleEndian, ExplicitVRLittleEndian),
    (ImplicitVRLittleEndian, ImplicitVRLittleEndian),
    (ExplicitVRBigEndian, ExplicitVRBigEndian),
])
def test_header_is_kept_raw_for_native_syntaxes(tmp_path: Path, ts: str, header_ts: str) -> None:
    ds = new_dataset(PatientName="Raw^Header", pixel_bytes=4096)
    path = part10(tmp_path, encode(ds, ts), ts)
    parsed, header, syntax = parse(path, ts)
    assert syntax == header_ts
    assert parsed.SOPInstanceUID == ds.SOPInstanceUID
    assert len(header) < 4096, "pixel data must not be kept in the index header"
    back = decode_header(header, syntax)
    assert back.PatientName == "Raw^Header"
    assert back.SOPInstanceUID == ds.SOPInstanceUID


def test_deflated_and_big_headers_are_reencoded_without_bulk(tmp_path: Path,
                                                            dicom_files: DicomFiles) -> None:
    deflated = dicom_files.fresh("image_dfl.dcm")
    with open(deflated, "rb") as fh:
        _, header, syntax = read_record(fh, dataset_offset(fh), DeflatedExplicitVRLittleEndian)
    assert syntax == ExplicitVRLittleEndian
    assert decode_header(header, syntax).SOPInstanceUID == file_meta(
        deflated).MediaStorageSOPInstanceUID

    ecg = dicom_files.fresh("waveform_ecg.dcm")  # waveform data is not pixel data
    ts = str(file_meta(ecg).TransferSyntaxUID)
    assert ecg.stat().st_size > MAX_RAW_HEADER
    with open(ecg, "rb") as fh:
        _, header, syntax = read_record(fh, dataset_offset(fh), ts)
    assert len(header) < MAX_RAW_HEADER
    back = decode_header(header, syntax)
    assert "WaveformSequence" not in back
    assert back.SOPInstanceUID == file_meta(ecg).MediaStorageSOPInstanceUID


def test_build_record(tmp_path: Path) -> None:
    ds = new_dataset(PatientID="../../etc", StudyDate="20240229", Modality="MR",
                     InstanceNumber="7")
    del ds.SeriesNumber
    parsed, header, syntax = parse(part10(tmp_path, encode(ds)))
    rec = build_record(parsed, header, syntax, ExplicitVRLittleEndian, "1.2.3", "SCU",
                       "hierarchical")
    assert rec.sop_instance_uid == ds.SOPInstanceUID
    assert rec.sop_class_uid == ds.SOPClassUID  # the dataset's, not the request's
    assert rec.patient["patient_id"] == "../../etc"  # indexed as sent...
    assert ".." not in rec.rel_path.parts  # ...but never used raw as a path
    assert rec.rel_path.name == f"{ds.SOPInstanceUID}.dcm"
    assert rec.series["modality"] == "MR"
    assert rec.instance["instance_number"] == 7
    assert rec.series["series_number"] is None
    assert rec.source_ae == "SCU"
    dated = build_record(parsed, header, syntax, ExplicitVRLittleEndian, "1.2.3", "SCU", "date")
    assert dated.rel_path.parts[:3] == ("2024", "02", "29")


def test_build_record_falls_back_to_the_request_sop_class(tmp_path: Path) -> None:
    ds = new_dataset()
    del ds.SOPClassUID
    parsed, header, syntax = parse(part10(tmp_path, encode(ds)))
    rec = build_record(parsed, header, syntax, ExplicitVRLittleEndian,
                       "1.2.840.10008.5.1.4.1.1.7", "", "flat")
    assert rec.sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert rec.rel_path == PurePosixPath(f"{ds.SOPInstanceUID}.dcm")


@pytest.mark.parametrize(("keyword", "value", "message"), [
    ("SOPInstanceUID", "../x", "SOPInstanceUID is not a valid UID: '../x'"),
    ("StudyInstanceUID", "../../x", "StudyInstanceUID is not a valid UID: '../../x'"),
    ("SeriesInstanceUID", "1.2.abc", "SeriesInstanceUID is not a valid UID: '1.2.abc'"),
    ("SOPClassUID", "x/y", "SOPClassUID is not a valid UID: 'x/y'"),
    ("StudyInstanceUID", "", "StudyInstanceUID is missing"),
])
def test_build_record_validates_uids(tmp_path: Path, keyword: str, value: str,
                                     message: str) -> None:
    attrs: dict[str, Any] = {keyword: value}
    ds = new_dataset(**attrs)
    parsed, header, syntax = parse(part10(tmp_path, encode(ds)))
    with pytest.raises(DatasetMismatch, match=message.replace(".", r"\.")):
        build_record(parsed, header, syntax, ExplicitVRLittleEndian, "1.2.3", "", "flat")


def test_received_date_is_today_for_the_date_layout(tmp_path: Path) -> None:
    ds = new_dataset(StudyDate="")
    parsed, header, syntax = parse(part10(tmp_path, encode(ds)))
    rec = build_record(parsed, header, syntax, ExplicitVRLittleEndian, "", "", "date")
    today = rec.received_at.date()
    assert rec.rel_path.parts[:3] == (f"{today.year:04d}", f"{today.month:02d}",
                                      f"{today.day:02d}")
    assert isinstance(today, date)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "JPEG2000.dcm"])
def test_truncated_pixel_data_is_refused(tmp_path: Path, name: str) -> None:
    source = Path(pydicom.data.get_testdata_file(name, download=False))
    syntax = str(pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    whole = source.read_bytes()
    for data, complete in ((whole, True), (whole[:-200], False)):
        path = tmp_path / ("whole.dcm" if complete else "cut.dcm")
        path.write_bytes(data)
        with open(path, "rb") as fh:
            if complete:
                read_record(fh, dataset_offset(fh), syntax)
            else:
                with pytest.raises(UnreadableDataset, match="truncated"):
                    read_record(fh, dataset_offset(fh), syntax)


def _local_testdata() -> Iterator[tuple[Path, str, int]]:
    """pydicom's bundled files we would parse: (path, transfer syntax, dataset offset)."""
    root = Path(pydicom.data.get_testdata_file("CT_small.dcm", download=False)).parent
    for path in sorted(p for p in root.rglob("*.dcm") if p.stat().st_size < 5_000_000):
        try:
            syntax = str(pydicom.dcmread(path, stop_before_pixels=True)
                         .file_meta.TransferSyntaxUID)
            with open(path, "rb") as fh:
                offset = dataset_offset(fh)
                read_record(fh, offset, syntax)
        except Exception:       # not a Part-10 file we would accept: nothing to compare
            continue
        yield path, syntax, offset


def test_indexed_values_are_pydicoms_for_every_test_file(tmp_path: Path) -> None:
    # build_record decodes raw header elements without building pydicom's DataElements
    # (ingest._Values); the record must be the one the fully converted dataset gives,
    # whatever the character set, VR and syntax of the file.
    compared = 0
    for path, syntax, offset in _local_testdata():
        with open(path, "rb") as fh:
            fast, header, hs = read_record(fh, offset, syntax)
            slow, _, _ = read_record(fh, offset, syntax)
        for _elem in slow:      # iterating converts every element
            pass
        try:
            want = build_record(slow, header, hs, syntax, "1.2.3", "", "flat")
        except DatasetMismatch:
            with pytest.raises(DatasetMismatch):
                build_record(fast, header, hs, syntax, "1.2.3", "", "flat")
            continue
        got = build_record(fast, header, hs, syntax, "1.2.3", "", "flat")
        for field in ("sop_instance_uid", "sop_class_uid", "study_instance_uid",
                      "series_instance_uid", "patient", "study", "series", "instance",
                      "rel_path"):
            assert getattr(got, field) == getattr(want, field), (path.name, field)
        compared += 1
    assert compared > 20, compared


def test_the_structure_walk_finds_what_the_header_scan_finds() -> None:
    # The store path walks a file once (check_dataset, which also notes where the
    # indexed elements are); read_record given that walk must parse as it does alone.
    compared = 0
    for path, syntax, offset in _local_testdata():
        with open(path, "rb") as fh:
            try:
                walked = check_dataset(fh, offset, syntax, INDEXED_TAGS)
            except (UnreadableDataset, DatasetMismatch):    # refused: never parsed
                continue
            alone = read_record(fh, offset, syntax)
            given = read_record(fh, offset, syntax, walked)
        assert given[1:] == alone[1:], path.name
        assert list(given[0].keys()) == list(alone[0].keys()), path.name
        for tag in alone[0].keys():
            want, got = alone[0].get_item(tag), given[0].get_item(tag)
            assert (got.VR, got.value) == (want.VR, want.value), (path.name, tag)
        compared += 1
    assert compared > 20, compared
