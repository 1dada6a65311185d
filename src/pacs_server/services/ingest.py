"""Turn a received dataset file into an `InstanceRecord` and a staged Part-10 file.

Runs in the association's worker thread (blocking I/O is fine there, never on the loop).
The dataset bytes are copied exactly as received: only the File Meta Information is
ours (received transfer syntax, calling AE as Source Application Entity Title).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs_server import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs_server.errors import DatasetMismatch, UnreadableDataset
from pacs_server.index.attributes import QR_ATTRIBUTES, Attribute
from pacs_server.index.records import InstanceRecord
from pacs_server.services.dataset_check import Walked
from pacs_server.services.header_scan import ScanError, scan
from pacs_server.services.header_values import HeaderValues
from pacs_server.storage import layout

# Headers bigger than this are re-encoded without their bulk elements (waveforms,
# encapsulated documents) instead of being kept byte for byte.
MAX_RAW_HEADER = 256 * 1024
_BULK_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


@dataclass
class StagedInstance:
    """A fsynced .part file in .incoming plus its record, waiting to be placed."""

    record: InstanceRecord
    part: Path


def dataset_offset(fh: BinaryIO) -> int:
    """Offset of the dataset in a Part-10 file whose meta starts with its group length."""
    fh.seek(0)
    head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise UnreadableDataset("received file has no DICOM preamble")
    tag_group, tag_elem, vr, vl = struct.unpack("<HH2sH", head[132:140])
    if (tag_group, tag_elem) != (2, 0) or vr != b"UL" or vl != 4:
        raise UnreadableDataset("received file meta lacks its group length")
    (group_len,) = struct.unpack("<I", head[140:144])
    return 144 + int(group_len)


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    source_ae: str) -> bytes:
    """Preamble + DICM + our File Meta Information group (PS3.10 7.1), encoded.

    Hand-encoded: the group is seven short elements, and pydicom's general writer costs
    more per instance than everything else on the store path but the parse.
    """
    body = b"".join([
        b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",
        _meta_elem(0x0002, "UI", sop_class, b"\0"),
        _meta_elem(0x0003, "UI", sop_instance, b"\0"),
        _meta_elem(0x0010, "UI", transfer_syntax, b"\0"),
        _meta_elem(0x0012, "UI", IMPLEMENTATION_CLASS_UID, b"\0"),
        _meta_elem(0x0013, "SH", IMPLEMENTATION_VERSION_NAME, b" "),
        _meta_elem(0x0016, "AE", source_ae, b" ") if source_ae else b"",
    ])
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _meta_elem(element: int, vr: str, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<HH2sH", 0x0002, element, vr.encode(), len(raw)) + raw


def read_record(fh: BinaryIO, offset: int, transfer_syntax: str,
                walked: Walked | None = None) -> tuple[Dataset, bytes, str]:
    """Parse the header (up to Pixel Data) of the dataset at `offset`.

    `walked`: what `check_dataset(..., INDEXED_TAGS)` found in this very file, so that
    the header is not walked a second time.

    Returns the dataset, the header bytes to keep in the index and their transfer syntax.
    """
    fast = _read_fast(fh, offset, transfer_syntax, walked)
    if fast is not None:
        return fast
    fh.seek(0)
    try:
        ds = dcmread(fh, stop_before_pixels=True, force=True)
        if not _has_standard_element(ds):
            raise UnreadableDataset("received bytes are not a DICOM data set")
        ds.SOPInstanceUID  # force a parse of the leading elements  # noqa: B018
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error,
            NotImplementedError, OverflowError, TypeError) as exc:
        raise UnreadableDataset(f"dataset cannot be parsed: {exc}") from None
    except AttributeError:
        raise DatasetMismatch("SOPInstanceUID is missing") from None
    end = fh.tell()
    _check_complete(fh, end, transfer_syntax)
    raw_ok = transfer_syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                 ExplicitVRBigEndian) or not _is_native(transfer_syntax)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        raw_ok = False
    if raw_ok and 0 <= end - offset <= MAX_RAW_HEADER:
        fh.seek(offset)
        return ds, fh.read(end - offset), _header_syntax(transfer_syntax)
    return ds, _encode_without_bulk(ds), ExplicitVRLittleEndian


# What build_record reads (and the character set to decode it); the fast path decodes
# only these (with pydicom, lazily).
INDEXED_TAGS = QR_ATTRIBUTES.tags | {int(Tag("SpecificCharacterSet"))}
_RECORD_ATTRS = {level: QR_ATTRIBUTES.recorded(level) for level in QR_ATTRIBUTES.levels}
_FAST_SYNTAXES_IMPLICIT: dict[str, bool] = {ImplicitVRLittleEndian: True,
                                           ExplicitVRLittleEndian: False}


def _read_fast(fh: BinaryIO, offset: int, transfer_syntax: str,
               walked: Walked | None) -> tuple[Dataset, bytes, str] | None:
    """The common case without pydicom's full parse: Little Endian, header under
    MAX_RAW_HEADER, the three identifying UIDs present. None means: use the full parser
    (it also produces the precise error for anything malformed)."""
    if transfer_syntax in _FAST_SYNTAXES_IMPLICIT:
        implicit = _FAST_SYNTAXES_IMPLICIT[transfer_syntax]
    elif _is_native(transfer_syntax):
        return None                       # big endian, deflated
    else:
        implicit = False                  # encapsulated: Explicit VR Little Endian
    fh.seek(offset)
    if walked is not None:
        if walked.pixel > MAX_RAW_HEADER:
            return None                   # header larger than we keep raw
        head = fh.read(walked.pixel)
        found, pixel = walked.found, walked.pixel
    else:
        head = fh.read(MAX_RAW_HEADER + 12)
        try:
            found, pixel = scan(head, 0, len(head), implicit, INDEXED_TAGS)
        except ScanError:
            return None
        if pixel == len(head) and len(head) > MAX_RAW_HEADER:
            return None                   # header larger than we keep raw
    if not {_SOP_INSTANCE, _STUDY_UID, _SERIES_UID} <= found.keys():
        return None
    if walked is None:
        # (check_dataset, which made `walked`, refused a Pixel Data cut short already)
        _check_complete(fh, offset + pixel, transfer_syntax)
    elements: dict[BaseTag, Any] = {
        BaseTag(tag): RawDataElement(BaseTag(tag), vr, length, head[start:start + length],
                                     offset + start, implicit, True)
        for tag, (vr, start, length) in found.items()
    }
    return Dataset(elements), head[:pixel], _header_syntax(transfer_syntax)


_SOP_INSTANCE = 0x00080018
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E


def _has_standard_element(ds: Dataset) -> bool:
    """True when the parse found at least one public, dictionary-known data element.

    With force=True pydicom "parses" anything (garbage becomes unknown tags with VR UN,
    or nothing at all), so without this check random bytes would be answered as a
    dataset that merely lacks its SOP Instance UID (0xA900) instead of one we cannot
    understand (0xC000). Only tags are looked at: no value is decoded here.
    """
    return any(tag.group >= 0x0008 and not tag.is_private and dictionary_has_tag(tag)
               for tag in ds.keys())


def _check_complete(fh: BinaryIO, pixel_offset: int, transfer_syntax: str) -> None:
    """Refuse a dataset whose Pixel Data is cut short (a sender that stopped mid-way).

    The header parse stops before Pixel Data, so a truncated file would otherwise be
    archived; its declared length (or, when encapsulated, its closing delimiter) tells.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return  # offsets refer to the inflated stream; pydicom already parsed it whole
    size = os.fstat(fh.fileno()).st_size
    fh.seek(pixel_offset)
    head = fh.read(12)
    big = transfer_syntax == ExplicitVRBigEndian
    if len(head) < 8 or head[:4] != (b"\x7f\xe0\x00\x10" if big else b"\xe0\x7f\x10\x00"):
        return  # no Pixel Data: nothing follows the header we parsed
    if transfer_syntax == ImplicitVRLittleEndian:
        (length,), header_len = struct.unpack("<I", head[4:8]), 8
    elif len(head) == 12:
        (length,), header_len = struct.unpack(">I" if big else "<I", head[8:12]), 12
    else:
        raise UnreadableDataset("dataset is truncated inside the Pixel Data header")
    if length != 0xFFFFFFFF:
        if pixel_offset + header_len + length > size:
            raise UnreadableDataset(
                f"dataset is truncated: Pixel Data declares {length} bytes, "
                f"{size - pixel_offset - header_len} received")
        return
    # Encapsulated: the fragments end with a Sequence Delimitation Item.
    fh.seek(max(pixel_offset, size - 65536))
    if b"\xfe\xff\xdd\xe0" not in fh.read():
        raise UnreadableDataset("dataset is truncated: encapsulated Pixel Data has no "
                                "sequence delimiter")


def _is_native(ts: str) -> bool:
    return ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                  DeflatedExplicitVRLittleEndian)


def _header_syntax(ts: str) -> str:
    # Encapsulated syntaxes encode the header as Explicit VR Little Endian.
    if ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
        return ts
    return ExplicitVRLittleEndian


def _encode_without_bulk(ds: Dataset) -> bytes:
    slim = Dataset()
    for elem in ds:
        if elem.VR in _BULK_VRS and elem.value is not None and len(elem.value) > 1024:
            continue
        if elem.keyword in ("IconImageSequence", "WaveformSequence"):
            continue
        slim.add(elem)
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    try:
        write_dataset(buf, slim)
    except Exception as exc:  # pydicom raises assorted errors on odd values
        raise UnreadableDataset(f"dataset header cannot be re-encoded: {exc}") from None
    return buf.getvalue()


def _text(ds: HeaderValues, keyword: str, limit: int = 256) -> str:
    try:
        return ds.text(keyword)[:limit]
    except Exception:  # a malformed value must not sink the whole instance
        return ""


def _date(ds: HeaderValues, keyword: str) -> str:
    """A DA value as YYYYMMDD; ACR-NEMA style 'YYYY.MM.DD' is normalised, not cut."""
    value = _text(ds, keyword, 64).replace(".", "").replace("-", "")
    return value[:8]


def _int(ds: HeaderValues, keyword: str) -> int | None:
    return ds.integer(keyword)


def _value(ds: HeaderValues, attr: Attribute) -> str | int | None:
    """The indexed form of one attribute (free text cut at 256 characters)."""
    if attr.kind == "date":
        return _date(ds, attr.keyword)
    if attr.kind == "int":
        return _int(ds, attr.keyword)
    return _text(ds, attr.keyword, attr.length or 256)


def build_record(ds: Dataset, header: bytes, header_syntax: str, transfer_syntax: str,
                 request_sop_class: str, source_ae: str, naming: str) -> InstanceRecord:
    """Validate the identifying UIDs and collect the indexed attributes."""
    values = HeaderValues(ds)
    sop_uid = layout.check_uid("SOPInstanceUID", _text(values, "SOPInstanceUID"))
    study_uid = layout.check_uid("StudyInstanceUID", _text(values, "StudyInstanceUID"))
    series_uid = layout.check_uid("SeriesInstanceUID", _text(values, "SeriesInstanceUID"))
    sop_class = _text(values, "SOPClassUID") or request_sop_class
    layout.check_uid("SOPClassUID", sop_class)
    now = datetime.now(UTC)
    levels = {level: {a.column: _value(values, a) for a in attrs}
              for level, attrs in _RECORD_ATTRS.items()}
    record = InstanceRecord(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        transfer_syntax_uid=transfer_syntax,
        patient=levels["PATIENT"],
        study=levels["STUDY"],
        series=levels["SERIES"],
        instance=levels["IMAGE"],
        header=header,
        header_syntax=header_syntax,
        source_ae=source_ae,
        received_at=now,
    )
    record.rel_path = layout.relative_path(
        naming, patient_id=record.patient["patient_id"], study_uid=study_uid,
        series_uid=series_uid, sop_uid=sop_uid, study_date=record.study["study_date"],
        received=now.date())
    return record
