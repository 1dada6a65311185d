"""dcmtk `findscu -W` against the Modality Worklist SCP, with dcmtk's `wlmscpfs` as the
reference (PS3.4 K.6.1).

Items go in through the admin command (`pacs_server worklist add`); the same items,
written as .wl files, are served by `wlmscpfs -dfp DIR`. Each query is asked of both and
the response datasets compared, then checked value by value against the items.

Intentional differences from wlmscpfs (docs/conformance.md):
* a requested sequence the item lacks is returned zero-length; wlmscpfs leaves it out
  (the comparison treats an empty sequence and an absent one alike);
* ScheduledProcedureStepStatus, ScheduledStationName, ScheduledProcedureStepID and
  StudyInstanceUID are matching keys here, return keys only in wlmscpfs;
* COMPLETED/DISCONTINUED steps are offered only when asked for by status; wlmscpfs
  offers every file;
* Person Name matching is case-insensitive here (as our Q/R C-FIND), exact in wlmscpfs;
* non-ASCII responses are in ISO_IR 192; wlmscpfs (3.6.7) answers with the file's bytes
  and no Specific Character Set, so the comparison decodes its answers with the file's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs_server.services.worklist_import import load_items
from support.dcmtk import tool
from support.polling import free_port, port_open, wait_until
from support.worklist import findscu_w, write_wl

pytestmark = pytest.mark.dcmtk("findscu", "wlmscpfs")

WLM_AE = "WLMREF"
SPS = "ScheduledProcedureStepSequence"

ITEMS: list[dict[str, Any]] = [
    {"patientId": "P001", "patientName": "DOE^JOHN", "patientBirthDate": "19800101",
     "patientSex": "M", "studyInstanceUid": "1.2.3.4.5.6.7.8.9", "accessionNumber": "ACC001",
     "requestedProcedureId": "RP001", "requestedProcedureDescription": "CT Abdomen",
     "referringPhysicianName": "HOUSE^GREGORY",
     "scheduledStationAeTitle": "CT_01", "scheduledProcedureStepStartDate": "20241220",
     "scheduledProcedureStepStartTime": "100000", "modality": "CT",
     "scheduledPerformingPhysicianName": "SMITH^ANNA", "scheduledStationName": "CTROOM1",
     "scheduledProcedureStepId": "SPS001", "scheduledProcedureStepDescription": "CT Abdomen",
     "scheduledProcedureStepStatus": "SCHEDULED"},
    {"patientId": "P002", "patientName": "DOE^JANE", "accessionNumber": "ACC002",
     "studyInstanceUid": "1.2.3.2", "requestedProcedureId": "RP002",
     "requestedProcedureDescription": "PROC 2", "scheduledStationAeTitle": "MR_01",
     "scheduledProcedureStepStartDate": "20241220",
     "scheduledProcedureStepStartTime": "143000", "modality": "MR",
     "scheduledProcedureStepId": "SPS002",
     "scheduledProcedureStepDescription": "EXAM 2", "scheduledProcedureStepStatus": "SCHEDULED"},
    {"patientId": "P003", "patientName": "ROE^RICHARD", "accessionNumber": "ACC003",
     "studyInstanceUid": "1.2.3.3", "requestedProcedureId": "RP003",
     "requestedProcedureDescription": "PROC 3", "scheduledStationAeTitle": "CT_01",
     "scheduledProcedureStepStartDate": "20241221",
     "scheduledProcedureStepStartTime": "080000", "modality": "CT",
     "scheduledPerformingPhysicianName": "JONES^BOB",
     "scheduledProcedureStepId": "SPS003",
     "scheduledProcedureStepDescription": "EXAM 3", "scheduledProcedureStepStatus": "SCHEDULED"},
    {"PatientID": "P004", "PatientName": "MÜLLER^JÖRG", "AccessionNumber": "ACC004",
     "StudyInstanceUID": "1.2.3.4",
     "RequestedProcedureID": "RP004", "RequestedProcedureDescription": "PROC 4",
     "ScheduledProcedureStepSequence": [{
         "ScheduledStationAETitle": "CT_02", "ScheduledProcedureStepStartDate": "20241222",
         "ScheduledProcedureStepStartTime": "090000", "Modality": "CT",
         "ScheduledProcedureStepID": "SPS004",
         "ScheduledProcedureStepDescription": "EXAM 4",
         "ScheduledProcedureStepStatus": "SCHEDULED"}]},
    {"patientId": "P005", "patientName": "Yamada^Tarou=山田^太郎=やまだ^たろう",
     "accessionNumber": "ACC005", "studyInstanceUid": "1.2.3.5", "requestedProcedureId": "RP005",
     "requestedProcedureDescription": "PROC 5",
     "scheduledStationAeTitle": ["US_01", "US_02"],
     "scheduledProcedureStepStartDate": "20241220",
     "scheduledProcedureStepStartTime": "120000", "modality": "US",
     "scheduledProcedureStepId": "SPS005",
     "scheduledProcedureStepDescription": "EXAM 5", "scheduledProcedureStepStatus": "SCHEDULED"},
    {"patientId": "P006", "patientName": "BROWN^BOB", "accessionNumber": "ACC006",
     "studyInstanceUid": "1.2.3.6", "requestedProcedureId": "RP006",
     "requestedProcedureDescription": "PROC 6", "scheduledStationAeTitle": "CT_01",
     "scheduledProcedureStepStartDate": "20241219",
     "scheduledProcedureStepStartTime": "235900", "modality": "CT",
     "scheduledProcedureStepId": "SPS006",
     "scheduledProcedureStepDescription": "EXAM 6", "scheduledProcedureStepStatus": "STARTED"},
]
# Only on our server: finished steps are not offered unless asked for (wlmscpfs would).
FINISHED = {"patientId": "P007", "requestedProcedureDescription": "PROC 7",
            "patientName": "DONE^DAVID", "accessionNumber": "ACC007",
            "scheduledStationAeTitle": "CT_01", "scheduledProcedureStepStartDate": "20241220",
            "modality": "CT", "scheduledProcedureStepId": "SPS007",
            "scheduledProcedureStepDescription": "EXAM 7",
            "scheduledProcedureStepStatus": "COMPLETED"}
# The character set each item's .wl file is written in (PS3.5 6.1.2.5).
CHARSETS = {"ACC004": "ISO_IR 100", "ACC005": ["", "ISO 2022 IR 87"]}

RETURN_TOP = ("PatientName", "PatientID", "AccessionNumber", "RequestedProcedureID",
              "StudyInstanceUID")
RETURN_STEP = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
               "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
               "ScheduledProcedureStepID")

# name: (top-level keys, step keys, accession numbers expected)
QUERIES: dict[str, tuple[dict[str, str], dict[str, str], set[str]]] = {
    "modality": ({}, {"Modality": "CT"}, {"ACC001", "ACC003", "ACC004", "ACC006"}),
    "station": ({}, {"ScheduledStationAETitle": "CT_01"}, {"ACC001", "ACC003", "ACC006"}),
    "station of several": ({}, {"ScheduledStationAETitle": "US_02"}, {"ACC005"}),
    "date": ({}, {"ScheduledProcedureStepStartDate": "20241220"},
             {"ACC001", "ACC002", "ACC005"}),
    "date range": ({}, {"ScheduledProcedureStepStartDate": "20241220-20241221"},
                   {"ACC001", "ACC002", "ACC003", "ACC005"}),
    "open date range": ({}, {"ScheduledProcedureStepStartDate": "-20241220"},
                        {"ACC001", "ACC002", "ACC005", "ACC006"}),
    "date and station": ({}, {"ScheduledProcedureStepStartDate": "20241220",
                              "ScheduledStationAETitle": "CT_01"}, {"ACC001"}),
    "time range": ({}, {"ScheduledProcedureStepStartDate": "20241220",
                        "ScheduledProcedureStepStartTime": "1000-1300"}, {"ACC001", "ACC005"}),
    "name wildcard": ({"PatientName": "DOE*"}, {}, {"ACC001", "ACC002"}),
    "name single-character wildcard": ({"PatientName": "?OE^*"}, {},
                                       {"ACC001", "ACC002", "ACC003"}),
    "performing physician": ({}, {"ScheduledPerformingPhysicianName": "SMITH^ANNA"},
                             {"ACC001"}),
    "accession": ({"AccessionNumber": "ACC002"}, {}, {"ACC002"}),
    "patient id and modality": ({"PatientID": "P003"}, {"Modality": "CT"}, {"ACC003"}),
    "no match": ({}, {"Modality": "NM"}, set()),
}


# --------------------------------------------------------------------------- helpers

def mwl_query(top: dict[str, str], step: dict[str, str] | None,
              top_keys: tuple[str, ...] = RETURN_TOP,
              step_keys: tuple[str, ...] | None = RETURN_STEP) -> Dataset:
    ds = Dataset()
    # Asked for, because wlmscpfs only names the character set of its answer if it is.
    ds.add_new(0x00080005, "CS", None)
    for kw in top_keys:
        setattr(ds, kw, "")
    for kw, value in top.items():
        setattr(ds, kw, value)
    item = Dataset()
    for kw in step_keys or ():
        setattr(item, kw, "")
    for kw, value in (step or {}).items():
        setattr(item, kw, value)
    setattr(ds, SPS, Sequence([item]))
    return ds


def canonical(ds: Dataset) -> dict[str, Any]:
    """Keyword → decoded value (sequences recursively); no character set, no empty
    sequences (see the module docstring)."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag == 0x00080005 or elem.tag.group in (0, 2):
            continue
        if elem.VR == "SQ":
            if elem.value:
                out[elem.keyword] = [canonical(i) for i in elem.value]
            continue
        value = elem.value
        if value is None:
            value = ""
        elif isinstance(value, pydicom.multival.MultiValue):
            value = "\\".join(str(v) for v in value)
        out[elem.keyword] = str(value).strip()
    return out


def by_accession(responses: list[Dataset],
                 charsets: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Responses by accession number; `charsets` names the character set of the answers
    that do not say (wlmscpfs sends the file's bytes without Specific Character Set)."""
    for r in responses:
        acc = str(r.get("AccessionNumber", ""))
        if "SpecificCharacterSet" not in r and charsets and acc in charsets:
            r.SpecificCharacterSet = charsets[acc]
            r.set_original_encoding(*r.original_encoding[:2],
                                    convert_encodings(r.SpecificCharacterSet))
    found = {str(r.get("AccessionNumber", "")): canonical(r) for r in responses}
    assert len(found) == len(responses), "two responses for one accession number"
    return found


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs_server", *args], capture_output=True,
                          text=True, timeout=120, input=stdin)


@pytest.fixture
def wlmscpfs(tmp_path: Path) -> Iterator[Callable[[list[Dataset]], int]]:
    """Factory: serve datasets with dcmtk's wlmscpfs (AE WLMREF); returns its port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(items: list[Dataset]) -> int:
        root = tmp_path / "wlistdb"
        aedir = root / WLM_AE
        aedir.mkdir(parents=True)
        (aedir / "lockfile").touch()
        for i, ds in enumerate(items):
            write_wl(ds, aedir / f"item{i}.wl", CHARSETS.get(str(ds.AccessionNumber)))
        port = free_port()
        proc = subprocess.Popen([tool("wlmscpfs"), "-dfp", str(root), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_until(lambda: proc.poll() is not None or port_open(port), 15.0,
                   f"wlmscpfs on port {port}")
        assert proc.poll() is None, f"wlmscpfs exited with {proc.returncode}"
        return port

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def worklist_server(tmp_path: Path, run_pacs: Callable[..., Any]) -> Any:
    """Our server with ITEMS and FINISHED added by `pacs_server worklist add FILE`."""
    items = tmp_path / "items.json"
    items.write_text(json.dumps([*ITEMS, FINISHED], ensure_ascii=False), encoding="utf-8")
    proc = run_pacs()
    added = run_cli("--db", str(tmp_path / "pacs.db"), "worklist", "add", str(items))
    assert added.returncode == 0, added.stderr
    assert "added 7 worklist item(s)" in added.stdout
    return proc


# --------------------------------------------------------------------------- tests

def test_queries_answer_like_wlmscpfs(tmp_path: Path, worklist_server: Any,
                                      wlmscpfs: Callable[[list[Dataset]], int]) -> None:
    """Items added to a running server are found at once, and each query returns the
    same datasets as dcmtk's reference SCP, valued as the items say."""
    items = [ds for _, ds in load_items(str(_json_file(tmp_path, ITEMS)))]
    wlm_port = wlmscpfs(items)
    source = {str(ds.AccessionNumber): canonical(ds) for ds in items}
    for name, (top, step, expected) in QUERIES.items():
        query = mwl_query(top, step)
        ours = findscu_w(worklist_server.port, query, tmp_path / "ours")
        ref = findscu_w(wlm_port, query, tmp_path / "ref", called=WLM_AE)
        assert ours.returncode == 0, (name, ours.stderr[-2000:])
        assert ref.returncode == 0, (name, ref.stderr[-2000:])
        got, want = by_accession(ours.responses), by_accession(ref.responses, CHARSETS)
        assert set(got) == expected, name
        assert got == want, name
        for acc, response in got.items():
            item = source[acc]
            assert set(response) == {*RETURN_TOP, SPS}, name
            for kw in RETURN_TOP:
                assert response[kw] == item.get(kw, ""), (name, kw)
            (step_rsp,) = response[SPS]
            assert set(step_rsp) == set(RETURN_STEP), name
            for kw in RETURN_STEP:
                assert step_rsp[kw] == item[SPS][0].get(kw, ""), (name, kw)


def test_empty_step_item_returns_the_step_keys(tmp_path: Path, worklist_server: Any,
                                               wlmscpfs: Callable[[list[Dataset]], int]
                                               ) -> None:
    items = [ds for _, ds in load_items(str(_json_file(tmp_path, ITEMS)))]
    wlm_port = wlmscpfs(items)
    query = mwl_query({"AccessionNumber": "ACC002"}, {}, step_keys=None)
    ours = findscu_w(worklist_server.port, query, tmp_path / "ours").responses
    ref = findscu_w(wlm_port, query, tmp_path / "ref", called=WLM_AE).responses
    assert by_accession(ours) == by_accession(ref, CHARSETS)
    (step,) = ours[0].ScheduledProcedureStepSequence
    assert step.Modality == "MR" and step.ScheduledStationAETitle == "MR_01"
    assert step.ScheduledProcedureStepEndDate == ""     # zero length: the item has none
    assert "ScheduledProcedureStepStatus" in step


def test_status_selects_and_finished_steps_are_hidden(tmp_path: Path,
                                                      worklist_server: Any) -> None:
    port = worklist_server.port
    all_ct = findscu_w(port, mwl_query({}, {"Modality": "CT"}), tmp_path / "a").responses
    assert "ACC007" not in by_accession(all_ct)
    for status, expected in (("COMPLETED", {"ACC007"}), ("STARTED", {"ACC006"}),
                             ("SCHEDULED", {"ACC001", "ACC003", "ACC004"})):
        query = mwl_query({}, {"Modality": "CT", "ScheduledProcedureStepStatus": status},
                          step_keys=(*RETURN_STEP, "ScheduledProcedureStepStatus"))
        found = findscu_w(port, query, tmp_path / status).responses
        got = by_accession(found)
        assert set(got) == expected, status
        assert all(r[SPS][0]["ScheduledProcedureStepStatus"] == status for r in got.values())


def test_names_fold_case_and_non_ascii_round_trips(tmp_path: Path,
                                                   worklist_server: Any) -> None:
    port = worklist_server.port
    found = findscu_w(port, mwl_query({"PatientName": "doe*"}, {}),
                      tmp_path / "case").responses
    assert set(by_accession(found)) == {"ACC001", "ACC002"}
    found = findscu_w(port, mwl_query({"PatientName": "müller*"}, {}),
                      tmp_path / "latin").responses
    (rsp,) = found
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert str(rsp.PatientName) == "MÜLLER^JÖRG"
    found = findscu_w(port, mwl_query({"AccessionNumber": "ACC005"}, {}),
                      tmp_path / "jp").responses
    (rsp,) = found
    assert rsp.PatientName.ideographic == "山田^太郎"
    assert rsp.PatientName.phonetic == "やまだ^たろう"


def test_wl_directory_imports_as_it_is(tmp_path: Path, run_pacs: Callable[..., Any],
                                       wlmscpfs: Callable[[list[Dataset]], int]) -> None:
    """A wlmscpfs directory (ISO 2022 IR 87, Latin-1 and ASCII files, plus pydicom's
    Japanese test file made into a worklist item) is imported by the command as is."""
    items = [ds for _, ds in load_items(str(_json_file(tmp_path, ITEMS)))]
    wlm_port = wlmscpfs(items)
    jp = pydicom.dcmread(get_charset_files("chrH31.dcm")[0])
    extra = Dataset()
    extra.SpecificCharacterSet = jp.SpecificCharacterSet
    extra.PatientName = jp.PatientName
    extra.PatientID = "P031"
    extra.AccessionNumber = "ACC031"
    extra.StudyInstanceUID = "1.2.3.31"
    extra.RequestedProcedureID = "RP031"
    extra.RequestedProcedureDescription = "MR Head"
    step = Dataset()
    step.ScheduledProcedureStepStartDate = "20241230"
    step.ScheduledProcedureStepStartTime = "101500"
    step.Modality = "MR"
    step.ScheduledStationAETitle = "MR_01"
    step.ScheduledProcedureStepID = "SPS031"
    step.ScheduledProcedureStepDescription = "MR Head"
    extra.ScheduledProcedureStepSequence = Sequence([step])
    write_wl(extra, tmp_path / "wlistdb" / WLM_AE / "chrH31.wl", jp.SpecificCharacterSet)
    proc = run_pacs()
    added = run_cli("--db", str(tmp_path / "pacs.db"), "worklist", "add",
                    str(tmp_path / "wlistdb"))
    assert added.returncode == 0, added.stderr
    query = mwl_query({}, {}, step_keys=RETURN_STEP)
    ours = findscu_w(proc.port, query, tmp_path / "ours").responses
    got = by_accession(ours)
    assert set(got) == {str(ds.AccessionNumber) for ds in items} | {"ACC031"}
    ref = findscu_w(wlm_port, query, tmp_path / "ref", called=WLM_AE).responses
    assert got == by_accession(ref, {**CHARSETS, "ACC031": jp.SpecificCharacterSet})
    jp_rsp = next(r for r in ours if r.AccessionNumber == "ACC031")
    assert jp_rsp.PatientName == jp.PatientName
    assert jp_rsp.PatientName.ideographic == jp.PatientName.ideographic != ""


def test_cli_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "pacs.db")
    good = {"patientId": "P1", "scheduledProcedureStepStartDate": "20241220"}
    cases = {
        "missing patient id": ({"scheduledProcedureStepStartDate": "20241220"}, "PatientID"),
        "missing date": ({"patientId": "P1"}, "ScheduledProcedureStepStartDate"),
        "bad date": ({**good, "scheduledProcedureStepStartDate": "20241301"},
                     "scheduledProcedureStepStartDate"),
        "bad time": ({**good, "scheduledProcedureStepStartTime": "256000"},
                     "scheduledProcedureStepStartTime"),
        "too long": ({**good, "scheduledStationAeTitle": "A_VERY_LONG_AE_TITLE"},
                     "scheduledStationAeTitle"),
        "unknown keyword": ({**good, "colour": "blue"}, "colour"),
    }
    for name, (bad, field) in cases.items():
        path = tmp_path / "in.json"
        path.write_text(json.dumps([good, bad]), encoding="utf-8")
        result = run_cli("--db", db, "worklist", "add", str(path))
        assert result.returncode == 2, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, result.stderr)
        assert "item 2" in lines[0] and field in lines[0], (name, lines[0])
    listed = run_cli("--db", db, "worklist", "list")
    assert listed.returncode == 0 and "0 item(s)" in listed.stdout   # nothing stored
    for args in (("show", "x"), ("list", "--date", "2024"), ("add", str(tmp_path / "nope"))):
        result = run_cli("--db", db, "worklist", *args)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    missing = run_cli("--db", db, "worklist", "show", "42")
    assert missing.returncode == 1 and "no worklist item 42" in missing.stderr


def test_cli_add_list_show_remove(tmp_path: Path) -> None:
    db = str(tmp_path / "pacs.db")
    path = _json_file(tmp_path, ITEMS[:2])
    assert run_cli("--db", db, "worklist", "add", str(path)).returncode == 0
    listed = run_cli("--db", db, "worklist", "list", "--modality", "MR")
    rows = listed.stdout.strip().splitlines()
    assert rows[0].split()[:3] == ["ID", "PATIENT", "ID"]
    assert "ACC002" in rows[1] and len(rows) == 3
    item_id = rows[1].split()[0]
    shown = run_cli("--db", db, "worklist", "show", item_id)
    assert "DOE^JANE" in shown.stdout and "MR_01" in shown.stdout
    assert run_cli("--db", db, "worklist", "remove", item_id).returncode == 0
    assert "1 item(s)" in run_cli("--db", db, "worklist", "list").stdout
    piped = run_cli("worklist", "add", "-", "--db", db, stdin=json.dumps(ITEMS[2]))
    assert piped.returncode == 0 and "added 1 worklist item(s)" in piped.stdout
    listed = run_cli("worklist", "list", "--db", db, "--date", "20241221-", "--station", "CT_01")
    assert [r.split()[1] for r in listed.stdout.splitlines()[1:-1]] == ["P003"]


def _json_file(tmp_path: Path, items: list[dict[str, Any]]) -> Path:
    path = tmp_path / "source.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return path
