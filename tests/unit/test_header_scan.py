"""services/header_scan.py: the fast walk must agree with pydicom or step aside."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacs_server.services import ingest
from pacs_server.services.header_scan import PIXEL_DATA, ScanError, scan
from pacs_server.services.ingest import build_record, dataset_offset, read_record


def _part10_with_group_length(path: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with open(path, "rb") as fh:
                dataset_offset(fh)
            pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID  # noqa: B018
        except Exception:
            return False
    return True


# pydicom's bundled files that arrive as a C-STORE would leave them in .incoming.
BUNDLED = [p for p in sorted(glob.glob(os.path.join(DATA_ROOT, "test_files", "*.dcm"))
                             + glob.glob(os.path.join(DATA_ROOT, "charset_files", "*.dcm")))
           if _part10_with_group_length(p)]


def _encode(ds: Dataset, implicit: bool) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    write_dataset(buf, ds)
    return buf.getvalue()


@pytest.mark.parametrize("implicit", [True, False])
def test_finds_values_after_nested_undefined_length_sequences(implicit: bool) -> None:
    inner = Dataset()
    inner.CodeValue = "X"
    item = Dataset()
    item.ContentSequence = Sequence([inner])
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    ds.ReferencedStudySequence = Sequence([item, Dataset()])
    ds.PatientID = "AFTER"
    ds.ReferencedStudySequence.is_undefined_length = True
    ds.ReferencedStudySequence[0].ContentSequence.is_undefined_length = True
    raw = _encode(ds, implicit) + b"\xe0\x7f\x10\x00OW\x00\x00\x00\x00\x00\x00"
    found, pixel = scan(raw, 0, len(raw), implicit, {int(Tag("PatientID")), 0x00080018})
    vr, start, length = found[int(Tag("PatientID"))]
    assert raw[start:start + length].rstrip() == b"AFTER"
    assert pixel == len(raw) - 12
    assert raw[pixel:pixel + 4] == b"\xe0\x7f\x10\x00" and PIXEL_DATA == 0x7FE00010


def test_garbage_is_refused_not_guessed() -> None:
    with pytest.raises(ScanError):
        scan(b"\x08\x00\x18\x00\x01\x02\xff\xff" * 4, 0, 32, False, {0x00080018})


def _record(path: str, fast: bool) -> object:
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    original = ingest._read_fast
    if not fast:
        ingest._read_fast = lambda *args: None  # type: ignore[assignment]
    try:
        with open(path, "rb") as fh:
            offset = dataset_offset(fh)
            ds, header, header_syntax = read_record(fh, offset, syntax)
            rec = build_record(ds, header, header_syntax, syntax, "", "SCU", "hierarchical")
            return (rec.patient, rec.study, rec.series, rec.instance, rec.sop_instance_uid,
                    header, header_syntax)
    except Exception as exc:  # both paths must fail alike
        return type(exc).__name__
    finally:
        ingest._read_fast = original  # type: ignore[assignment]


@pytest.mark.parametrize("path", BUNDLED, ids=[Path(p).name for p in BUNDLED])
def test_fast_path_agrees_with_pydicom(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _record(path, fast=True) == _record(path, fast=False)
