"""Worklist answers (services/worklist_items.py) encoded by services/answers.py are byte
for byte what pynetdicom's `encode` (what the SCP sent before) writes for the response
Dataset pydicom builds from the same stored item, in all four transfer syntaxes.

The reference decodes the stored DICOM JSON with pydicom's own `Dataset.from_json` and
picks the requested keys from that Dataset (the SCP's former response builder), so it
shares no code with the path under test. Items: dcmtk's sample worklist
(/usr/share/doc/dcmtk/examples/wlistdb), the e2e tests' items (Latin-1, person name
groups, multi-valued station), and one item per pydicom character set file, each
written as a .wl file in its character set and imported as the admin command does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode as upstream_encode

from pacs_server.services.answers import encode, to_dataset
from pacs_server.services.worklist import stored_form
from pacs_server.services.worklist_import import items_from_json, load_items
from pacs_server.services.worklist_items import (
    SPS_RETURN_KEYS,
    SPS_TAG,
    load_item,
    response,
)
from support.dcmtk import tool
from support.worklist import item, write_wl

DUMPS = Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS")
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            ExplicitVRBigEndian]
JSON_ITEMS: list[dict[str, Any]] = [
    item(1), item(2, patientName="GÜNTHER^ÉLODIE", requestedProcedureDescription="Knie"),
    item(3, patientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
         scheduledStationAeTitle=["US_01", "US_02"]),
    item(4, patientName="Wang^XiaoDong=王^小東", patientBirthDate="19800101",
         patientSex="F", referringPhysicianName="HOUSE^GREGORY",
         ScheduledProtocolCodeSequence=[{"CodeValue": "P1", "CodingSchemeDesignator": "L",
                                         "CodeMeaning": "Protokoll Ü"},
                                        {"CodeValue": "P22", "CodingSchemeDesignator": "L"}],
         RequestedProcedureCodeSequence=[{"CodeValue": "RPC1", "CodingSchemeDesignator": "L",
                                          "CodeMeaning": "Röntgen Thorax"}],
         ReferencedStudySequence=[{"ReferencedSOPClassUID": "1.2.840.10008.3.1.2.3.1",
                                   "ReferencedSOPInstanceUID": "1.2.9.4.1"}]),
]


@pytest.fixture(autouse=True)
def server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom as the server runs it: no read-time validation (dicom/runtime.py)."""
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                        pydicom.config.IGNORE)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The DICOM JSON the index holds for every item shape."""
    root = tmp_path_factory.mktemp("wlistdb")
    for dump in sorted(DUMPS.glob("*.dump")):
        subprocess.run([tool("dump2dcm"), "-q", str(dump), str(root / f"{dump.stem}.wl")],
                       check=True)
    for n, path in enumerate(get_charset_files("chr*.dcm")):
        ds = pydicom.dcmread(path)
        if "PatientName" not in ds:
            continue
        wl = Dataset()
        wl.PatientName = ds.PatientName
        wl.PatientID = f"C{n:03d}"
        wl.AccessionNumber = f"CHR{n:03d}"
        step = Dataset()
        step.ScheduledProcedureStepStartDate = "20241230"
        step.Modality = "MR"
        step.ScheduledStationAETitle = "MR_01"
        step.ScheduledProcedureStepID = f"SPS{n:03d}"
        wl.ScheduledProcedureStepSequence = Sequence([step])
        write_wl(wl, root / f"{Path(path).stem}.wl", ds.SpecificCharacterSet)
    items = [ds for _, ds in load_items(str(root))]
    assert len(items) >= 10 + 10
    items += [ds for _, ds in items_from_json(json.dumps(JSON_ITEMS), "items.json")]
    return [stored_form(ds)[1] for ds in items]


def keys(ds: Dataset, **values: Any) -> Dataset:
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def step_query(**step: Any) -> Dataset:
    return keys(Dataset(), PatientName="", PatientID="", AccessionNumber="",
                ScheduledProcedureStepSequence=Sequence([keys(Dataset(), **step)]))


QUERIES = {
    "step keys": step_query(ScheduledProcedureStepStartDate="",
                            ScheduledProcedureStepStartTime="", Modality="",
                            ScheduledStationAETitle="", ScheduledProcedureStepStatus=""),
    "empty step item": step_query(),
    "zero-length step": keys(Dataset(), PatientName="",
                             ScheduledProcedureStepSequence=Sequence()),
    "nested and absent keys": keys(
        step_query(ScheduledProtocolCodeSequence=Sequence([keys(
            Dataset(), CodeValue="", CodeMeaning="")]), ScheduledProcedureStepLocation=""),
        PatientBirthDate="", PatientSex="", PatientWeight="", StudyInstanceUID="",
        RequestedProcedureDescription="", ReferringPhysicianName="",
        RequestedProcedureCodeSequence=Sequence([Dataset()]),
        ReferencedStudySequence=Sequence(), SpecificCharacterSet="ISO_IR 100"),
}


def reference(item: Dataset, query: Dataset) -> Dataset:
    """The response pydicom Datasets make: the requested keys from the item."""
    out = _pick(item, query)
    if any(e.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") and e.value is not None
           and not str(e.value).isascii() for e in out.iterall()):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _pick(item: Dataset, query: Dataset) -> Dataset:
    out = Dataset()
    for elem in query:
        if elem.tag in (0x00080005, 0x00080052):
            continue
        stored = item.get(elem.tag)
        if elem.VR == "SQ":
            wanted = elem.value[0] if elem.value else None
            items = list(stored.value) if stored is not None and stored.VR == "SQ" else []
            if wanted is not None and len(wanted):
                items = [_pick(s, wanted) for s in items]
            elif elem.tag == SPS_TAG:
                items = [_completed(s) for s in items]
            out.add(DataElement(elem.tag, "SQ", Sequence(items)))
        elif stored is not None:
            out.add(stored)
        else:
            out.add(DataElement(elem.tag, dictionary_VR(elem.tag), None))
    return out


def _completed(step: Dataset) -> Dataset:
    out = Dataset(step)
    for tag in SPS_RETURN_KEYS:
        if tag not in out:
            out.add(DataElement(tag, dictionary_VR(tag).split(" or ")[0], None))
    return out


@pytest.mark.parametrize("name", QUERIES)
def test_answers_are_pydicoms_bytes(stored: list[str], name: str) -> None:
    query = QUERIES[name]
    for text in stored:
        elements = response(load_item(text), query)
        expected_ds = reference(Dataset.from_json(text), query)
        for syntax in SYNTAXES:
            expected = upstream_encode(expected_ds, syntax.is_implicit_VR,
                                       syntax.is_little_endian, syntax.is_deflated)
            assert expected
            if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
                got = encode(elements, syntax.is_implicit_VR)
            else:
                got = upstream_encode(to_dataset(elements), syntax.is_implicit_VR,
                                      syntax.is_little_endian, syntax.is_deflated)
            assert got == expected, (name, syntax.name, text[:200])


def test_the_shapes_include_sequences_and_character_sets(stored: list[str]) -> None:
    """The items cover what the answers must handle: nested sequences, more than one
    item, non-ASCII text (in several scripts), person name groups."""
    query = QUERIES["nested and absent keys"]
    answers = [to_dataset(response(load_item(text), query)) for text in stored]
    assert any(len(ds.ScheduledProcedureStepSequence[0].get(
        "ScheduledProtocolCodeSequence", [])) > 1 for ds in answers)
    assert any(len(ds.RequestedProcedureCodeSequence) for ds in answers)
    utf8 = [ds for ds in answers if ds.get("SpecificCharacterSet") == "ISO_IR 192"]
    assert len(utf8) >= 8
    assert any("=" in str(ds.PatientName) for ds in utf8)
