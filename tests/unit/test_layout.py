"""storage/layout.py: no value from the network can leave the archive root."""

from __future__ import annotations

from datetime import date
from pathlib import Path, PurePosixPath

import pytest

from pacs_server.errors import DatasetMismatch
from pacs_server.storage.filestore import FileStore
from pacs_server.storage.layout import (
    MAX_COMPONENT,
    PLACEHOLDER,
    check_uid,
    relative_path,
    safe_component,
)

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
RECEIVED = date(2024, 5, 6)

HOSTILE_IDS = [
    "../../etc",
    "..",
    ".",
    "/",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\windows",
    "a\x00b",
    "\x00",
    "tab\there\nnewline\x1b[31m",
    "x" * 300,
    "",
    "   ",
    "Müller^Jürgen",
    "~root",
    ".hidden",
]


def path_for(patient_id: str, naming: str = "hierarchical", **kw: str) -> PurePosixPath:
    args = dict(patient_id=patient_id, study_uid=STUDY, series_uid=SERIES, sop_uid=SOP,
                study_date="20240102", received=RECEIVED)
    args.update(kw)
    return relative_path(naming, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("patient_id", HOSTILE_IDS)
def test_hostile_patient_id_stays_inside_root(tmp_path: Path, patient_id: str) -> None:
    root = tmp_path / "archive"
    rel = path_for(patient_id)
    assert not rel.is_absolute()
    assert len(rel.parts) == 4
    first = rel.parts[0]
    assert first not in ("", ".", "..")
    assert not first.startswith(".")
    assert "/" not in first and "\\" not in first and "\x00" not in first
    assert all(32 < ord(c) < 127 for c in first), repr(first)
    assert len(first) <= MAX_COMPONENT
    final = (root / rel).resolve()
    assert final.is_relative_to(root.resolve())
    assert final.parent.parent.parent.parent == root.resolve()
    # and the file store agrees
    assert FileStore(root).path(rel) == final


def test_empty_patient_id_gets_the_placeholder() -> None:
    assert path_for("").parts[0] == PLACEHOLDER
    assert path_for("   ").parts[0] == PLACEHOLDER


def test_clean_patient_id_is_kept_as_is() -> None:
    assert path_for("PAT-001_a.b").parts[0] == "PAT-001_a.b"
    assert safe_component("X" * MAX_COMPONENT) == "X" * MAX_COMPONENT


def test_changed_ids_never_collide() -> None:
    # "A/B" and "A_B" both clean to A_B: the hash keeps them apart.
    names = {safe_component(v) for v in ["A/B", "A_B", "A\\B", "A B", "A\x00B", "x" * 300,
                                         "x" * 301, "..", "."]}
    assert len(names) == 9


def test_long_id_is_bounded_and_deterministic() -> None:
    long = "y" * 300
    assert len(safe_component(long)) == MAX_COMPONENT
    assert safe_component(long) == safe_component(long)


@pytest.mark.parametrize("naming", ["flat", "date", "hierarchical"])
def test_layouts(naming: str) -> None:
    rel = path_for("PAT", naming=naming)
    assert rel.name == f"{SOP}.dcm"
    expected = {
        "flat": (f"{SOP}.dcm",),
        "date": ("2024", "01", "02", STUDY, f"{SOP}.dcm"),
        "hierarchical": ("PAT", STUDY, SERIES, f"{SOP}.dcm"),
    }[naming]
    assert rel.parts == expected


@pytest.mark.parametrize("study_date", ["", "2024", "20241340", "2024-01-02", "../../..",
                                        "20240230"])
def test_date_layout_falls_back_to_received_date(study_date: str) -> None:
    rel = path_for("PAT", naming="date", study_date=study_date)
    assert rel.parts[:3] == ("2024", "05", "06")


@pytest.mark.parametrize("value", ["1.2.3", "0", "1.2.840.10008.5.1.4.1.1.2",
                                   "1." + "2" * 62, "1.2.3\x00", " 1.2.3 "])
def test_valid_uids(value: str) -> None:
    assert check_uid("SOPInstanceUID", value) == value.strip().rstrip("\x00")


@pytest.mark.parametrize("value", ["../x", "..", "1.2/3", "/1.2", "1..2", ".1.2", "1.2.",
                                   "1.2.a", "1.2.3\\4", "1." + "2" * 63, "1.2\x003",
                                   "1 .2", "１.２"])
def test_invalid_uids_are_rejected(value: str) -> None:
    with pytest.raises(DatasetMismatch, match="^SOPInstanceUID is not a valid UID: "):
        check_uid("SOPInstanceUID", value)


@pytest.mark.parametrize("value", ["", None, "   ", "\x00"])
def test_missing_uid(value: str | None) -> None:
    with pytest.raises(DatasetMismatch, match="^StudyInstanceUID is missing$"):
        check_uid("StudyInstanceUID", value)  # type: ignore[arg-type,unused-ignore]


@pytest.mark.parametrize("field", ["study_uid", "series_uid", "sop_uid"])
@pytest.mark.parametrize("naming", ["flat", "date", "hierarchical"])
def test_relative_path_validates_every_uid(field: str, naming: str) -> None:
    with pytest.raises(DatasetMismatch):
        path_for("PAT", naming=naming, **{field: "../../etc/passwd"})
