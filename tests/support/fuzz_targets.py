"""Coverage-guided fuzz targets for the parsers the server owns (atheris), and their seeds.

Each target takes arbitrary bytes and may raise only what its parser documents for bad
input; anything else escaping is a finding. The targets:

    header_scan    services/header_scan.scan: the top-level walk of the store path
                   (ScanError only, and the offsets it returns lie inside the buffer)
    dataset_check  services/dataset_check.check_dataset: the structure validator, in
                   the transfer syntax the first byte picks (UnreadableDataset,
                   DatasetMismatch only)
    identifier     dicom/identifiers.parse_identifier, then the retrieve rules of
                   services/retrieve.check_identifier (InvalidQuery only)
    config         config.load_config of the bytes as a YAML file (ConfigError only)

scripts/fuzz-atheris runs them under atheris (support/fuzz_atheris.py);
tests/unit/test_fuzz_targets.py replays the seeds and every saved case in
tests/fixtures/fuzz/ through the same functions, without atheris.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from pynetdicom.dsutils import decode

from pacs_server.config import load_config
from pacs_server.dicom.identifiers import PATIENT_ROOT, STUDY_ROOT, parse_identifier
from pacs_server.errors import ConfigError, DatasetMismatch, InvalidQuery, UnreadableDataset
from pacs_server.services.dataset_check import check_dataset
from pacs_server.services.header_scan import ScanError, scan
from pacs_server.services.retrieve import check_identifier

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "fixtures" / "fuzz"     # saved findings, one directory per target

SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless)
_MODELS = sorted(PATIENT_ROOT | STUDY_ROOT)
_WANTED = frozenset({0x00080018, 0x0020000D, 0x0020000E, 0x00100020, 0x00080060})


def header_scan(data: bytes) -> None:
    implicit = bool(data[:1]) and data[0] & 1 == 1
    buf = data[1:]
    try:
        found, pixel = scan(buf, 0, len(buf), implicit, _WANTED)
    except ScanError:
        return
    assert 0 <= pixel <= len(buf), pixel
    for _vr, start, length in found.values():
        assert 0 <= start and start + length <= len(buf), (start, length)


def dataset_check(data: bytes) -> None:
    syntax = SYNTAXES[data[0] % len(SYNTAXES)] if data else ExplicitVRLittleEndian
    path = _scratch(".dcm")
    path.write_bytes(data[1:])
    with open(path, "rb") as fh:          # the validator reads a received file
        try:
            check_dataset(fh, 0, syntax)
        except (UnreadableDataset, DatasetMismatch):
            pass


def identifier(data: bytes) -> None:
    model = _MODELS[data[0] % len(_MODELS)] if data else _MODELS[0]
    implicit = bool(data[1:2]) and data[1] & 1 == 1
    try:
        ds = decode(BytesIO(data[2:]), implicit, True)
    except Exception:  # not a dataset at all: pynetdicom answers that itself
        return
    try:
        req = parse_identifier(ds, model)
        if req.level in ("PATIENT", "STUDY", "SERIES", "IMAGE") and not (
                req.model == "STUDY" and req.level == "PATIENT"):
            check_identifier(req)
    except InvalidQuery:
        pass


_scratch_files: dict[str, Path] = {}


def _scratch(suffix: str) -> Path:
    """One reused scratch file per kind (a fuzz run calls a target many thousand times)."""
    path = _scratch_files.get(suffix)
    if path is None:
        fd, name = tempfile.mkstemp(suffix=suffix, prefix="pacs-fuzz-")
        os.close(fd)
        path = _scratch_files[suffix] = Path(name)
    return path


def config(data: bytes) -> None:
    path = _scratch(".yaml")
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "header_scan": header_scan, "dataset_check": dataset_check,
    "identifier": identifier, "config": config,
}


# --------------------------------------------------------------------------- seeds

def _dataset_seeds() -> list[bytes]:
    from support.instances import bundled_file, dataset_bytes

    out = []
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "JPEG2000.dcm"):
        out.append(dataset_bytes(bundled_file(name)))
    return out


def _encoded(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _identifier_seeds() -> list[bytes]:
    out = []
    for level, keys in (("STUDY", {"StudyInstanceUID": "1.2.3.4"}),
                        ("SERIES", {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}),
                        ("IMAGE", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3",
                                   "SOPInstanceUID": ["1.2.3.4", "1.2.3.5"]}),
                        ("PATIENT", {"PatientID": "PID-1", "PatientName": "A^B"})):
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        out.append(b"\x00\x01" + _encoded(ds, True))
    return out


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from: real datasets, identifiers and config files."""
    if target == "header_scan":
        return [b"\x00" + d for d in _dataset_seeds()] + [b"\x01" + _dataset_seeds()[1]]
    if target == "dataset_check":
        data = _dataset_seeds()
        return [b"\x01" + data[0], b"\x00" + data[1], b"\x01" + data[2], b"\x04" + data[3]]
    if target == "identifier":
        return _identifier_seeds()
    if target == "config":
        return [(ROOT / "pacs_server.yaml.example").read_bytes(),
                *(p.read_bytes() for p in sorted((ROOT / "tests/fixtures/configs").glob("*.yaml")))]
    raise KeyError(target)


def saved_cases(target: str) -> list[Path]:
    """Findings kept as regression cases (tests/fixtures/fuzz/<target>/*)."""
    directory = CASES / target
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
