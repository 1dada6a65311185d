"""The DICOM JSON built from raw elements is pydicom's `to_json_dict`, element for element,
for every file pydicom ships (character sets, private tags, UN, big endian included)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacs_server.services.dicomweb_json import dataset_json

_TEST_FILES = Path(str(get_testdata_file("CT_small.dcm", download=False))).parent
FILES = sorted(_TEST_FILES.glob("*.dcm")) + sorted(
    (_TEST_FILES.parent / "charset_files").glob("*.dcm"))


def _read(path: Path) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            ds.to_json_dict()
        except Exception:
            return None        # files pydicom itself cannot turn into JSON
        return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_same_as_pydicom(path: Path) -> None:
    ds = _read(path)
    if ds is None:
        pytest.skip(f"pydicom cannot encode {path.name} as JSON")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # pydicom's complaints about the test files
        expected = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict()
        assert dataset_json(ds) == expected


def test_enough_files_compared() -> None:
    assert len([p for p in FILES if _read(p) is not None]) > 60
