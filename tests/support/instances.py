"""The one instance builder: datasets made in code or from pydicom's bundled files, and
the files a test sends (`DicomFiles`)."""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom.dsutils import split_dataset

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Build deliberately invalid values (bad UIDs, over-long IDs) without warnings."""
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _apply(ds: Dataset, attrs: dict[str, Any]) -> None:
    """Set each keyword; a value of None deletes the element."""
    with lenient_pydicom():
        for keyword, value in attrs.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)


# --------------------------------------------------------------------------- datasets

def new_dataset(*, sop_class: str = CT_IMAGE, modality: str = "CT", pixel_bytes: int = 64,
                **attrs: Any) -> Dataset:
    """A minimal, valid instance with fresh UIDs (8-bit MONOCHROME2 pixel data) and a File
    Meta in Explicit VR Little Endian; `attrs` are set last (None deletes)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT-1"
    ds.PatientName = "Test^Patient"
    ds.StudyDate = "20240102"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows = 1
    ds.Columns = max(pixel_bytes, 1)
    if pixel_bytes:
        ds.PixelData = bytes(i % 251 for i in range(pixel_bytes))
    _apply(ds, attrs)
    return ds


def bundled_file(name: str) -> Path:
    """A file shipped with pydicom (test_files or charset_files); never downloaded."""
    charset = Path(DATA_ROOT) / "charset_files" / name
    if charset.is_file():
        return charset
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"{name} is not among pydicom's local test files")
    return Path(str(found))


@functools.cache
def _template(name: str) -> Dataset:
    ds = pydicom.dcmread(bundled_file(name), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        # e.g. rtstruct.dcm has no File Meta: keep the encoding it was read with.
        implicit, little = ds.original_encoding
        assert little, f"{name}: no transfer syntax and not little endian"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                          else ExplicitVRLittleEndian)
    return ds


def bundled_dataset(name: str = "CT_small.dcm", *, new_study: bool = True,
                    **attrs: Any) -> Dataset:
    """pydicom's `name` with a fresh SOP Instance UID (and a fresh study and series unless
    `new_study=False`), in its own transfer syntax; compressed pixel data is kept byte
    for byte. `attrs` are set last (None deletes), e.g. StudyInstanceUID=... to join a
    study."""
    ds = copy.deepcopy(_template(name))
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
    _apply(ds, attrs)
    return ds


def encode(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset encoded in a native (uncompressed, not deflated) transfer syntax."""
    buf = DicomBytesIO()
    buf.is_little_endian = ts != ExplicitVRBigEndian
    buf.is_implicit_VR = ts == ImplicitVRLittleEndian
    with lenient_pydicom():
        write_dataset(buf, copy.deepcopy(ds))
    return buf.getvalue()


# --------------------------------------------------------------------------- Part-10 files

def write_part10(path: Path, body: bytes, *, sop_class: str, sop_instance: str,
                 ts: str = ExplicitVRLittleEndian) -> None:
    """Preamble, DICM, File Meta, then `body` exactly as given."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    Path(path).write_bytes(buf.getvalue() + body)


def file_meta(path: Path) -> Dataset:
    """The File Meta Information of a Part-10 file."""
    meta, _ = split_dataset(Path(path))
    return meta


def sop_uid(path: Path) -> str:
    """The SOP Instance UID a Part-10 file's File Meta names."""
    return str(file_meta(path).MediaStorageSOPInstanceUID)


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta Information (the bytes sent)."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


class DicomFiles:
    """Writes the DICOM files of one test into its own directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def _target(self, stem: str, directory: Path | None = None) -> Path:
        self._n += 1
        d = directory or self.root
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{self._n:04d}-{stem}.dcm"

    def save(self, ds: Dataset, *, directory: Path | None = None, stem: str = "ds") -> Path:
        """`ds` written by pydicom, in the transfer syntax its File Meta names."""
        target = self._target(stem, directory)
        with lenient_pydicom():
            pydicom.dcmwrite(target, ds, enforce_file_format=True)
        return target

    def fresh(self, name: str, *, directory: Path | None = None, new_study: bool = True,
              **attrs: Any) -> Path:
        """pydicom's `name` with fresh UIDs in its own syntax (see `bundled_dataset`)."""
        ds = bundled_dataset(name, new_study=new_study, **attrs)
        return self.save(ds, directory=directory, stem=Path(name).stem)

    def generated(self, *, directory: Path | None = None, sop_class: str = CT_IMAGE,
                  modality: str = "CT", ts: str = ExplicitVRLittleEndian,
                  pixel_bytes: int = 64, **attrs: Any) -> Path:
        """A small instance built in code with fresh UIDs (see `new_dataset`)."""
        ds = new_dataset(sop_class=sop_class, modality=modality, pixel_bytes=pixel_bytes,
                         **attrs)
        return self.from_dataset(ds, directory=directory, ts=ts)

    def from_dataset(self, ds: Dataset, *, directory: Path | None = None,
                     ts: str = ExplicitVRLittleEndian, stem: str = "ds") -> Path:
        """`ds` encoded in native syntax `ts` behind a File Meta taken from its UIDs."""
        target = self._target(stem, directory)
        write_part10(target, encode(ds, ts), sop_class=str(ds.get("SOPClassUID", CT_IMAGE)),
                     sop_instance=str(ds.get("SOPInstanceUID", generate_uid())), ts=ts)
        return target

    def raw(self, body: bytes, *, sop_class: str = SECONDARY_CAPTURE,
            sop_instance: str | None = None, ts: str = ExplicitVRLittleEndian,
            stem: str = "raw") -> Path:
        """A File Meta header (valid UIDs) followed by `body` exactly as given."""
        target = self._target(stem)
        write_part10(target, body, sop_class=sop_class,
                     sop_instance=sop_instance or generate_uid(), ts=ts)
        return target

    def big(self, nbytes: int, **attrs: Any) -> Path:
        """One Secondary Capture instance with about `nbytes` of pixel data."""
        columns = 4096
        rows = max(1, nbytes // columns)
        length = rows * columns
        ds = new_dataset(sop_class=SECONDARY_CAPTURE, modality="OT", pixel_bytes=0,
                         Rows=rows, Columns=columns, **attrs)
        target = self._target("big")
        # (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
        pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little")
        write_part10(target, encode(ds) + pixel_header, sop_class=SECONDARY_CAPTURE,
                     sop_instance=str(ds.SOPInstanceUID))
        chunk = bytes(range(256)) * (1 << 14)  # 4 MiB of a recognisable pattern
        with open(target, "ab") as fh:
            remaining = length
            while remaining:
                piece = chunk[:min(len(chunk), remaining)]
                fh.write(piece)
                remaining -= len(piece)
        return target


def sender_dirs(files: DicomFiles, root: Path, senders: int,
                per_sender: int) -> tuple[list[Path], set[str]]:
    """`senders` directories of `per_sender` small instances each (3 patients shared
    across them) and every SOP Instance UID."""
    dirs, uids = [], set()
    for i in range(senders):
        d = root / f"sender{i}"
        for _ in range(per_sender):
            uids.add(sop_uid(files.generated(directory=d, PatientID=f"P{i % 3}",
                                             pixel_bytes=2048)))
        dirs.append(d)
    return dirs, uids
