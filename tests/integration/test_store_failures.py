"""C-STORE policies and failure paths: duplicates, hostile IDs, malformed data, bad disks.

Every failure must come back as a failure status with an Error Comment, leave nothing in
the archive or the index, and leave the server answering.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from structlog.testing import capture_logs

from pacs_server.config import Config
from pacs_server.storage.layout import safe_component
from support.archive import archived_files, incoming_files, index_counts, indexed_path
from support.instances import DicomFiles, dataset_bytes, encode, new_dataset, sop_uid
from support.scu import SUCCESS, Scu
from support.server import RunningServer

DUPLICATE = 0x0111
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def two_versions(dicom_files: DicomFiles, **second: Any) -> tuple[Path, Path]:
    """Two files with one SOP Instance UID but different content."""
    first = dicom_files.fresh("CT_small.dcm", PatientName="First^Version")
    ds = pydicom.dcmread(first)
    attrs: dict[str, Any] = {"PatientName": "Second^Version", **second}
    other = dicom_files.fresh("CT_small.dcm", new_study=False, **attrs)
    # same UIDs as the first, different bytes
    ds2 = pydicom.dcmread(other)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds2, keyword, getattr(ds, keyword))
    ds2.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds2.save_as(other, enforce_file_format=True)
    assert dataset_bytes(first) != dataset_bytes(other)
    return first, other


def stored_path(srv: RunningServer, uid: str) -> Path | None:
    return indexed_path(srv.archive, srv.db, uid)


def assert_nothing_stored(srv: RunningServer) -> None:
    assert archived_files(srv.archive) == []
    assert incoming_files(srv.archive) == []
    assert index_counts(srv.db)["instances"] == 0


def store_outcomes(logs: list[dict[str, Any]]) -> list[str]:
    """What the archive did with each C-STORE, from the server's log events."""
    return [e["outcome"] if e["event"] == "c_store.stored" else e["status"]
            for e in logs if e["event"] == "c_store.stored"
            or (e["event"] in ("dimse.failed", "dimse.error") and e["operation"] == "C-STORE")]


# --------------------------------------------------------------------------- duplicates

@pytest.mark.parametrize(("policy", "status", "kept"), [
    ("reject", DUPLICATE, "first"),
    ("replace", SUCCESS, "second"),
    ("ignore", SUCCESS, "first"),
])
async def test_duplicate_policy(start_server: Callable[..., Any],
                                make_cfg: Callable[..., Config], scu: Scu,
                                dicom_files: DicomFiles, policy: str, status: int,
                                kept: str) -> None:
    app = await start_server(make_cfg({"storage.duplicate_policy": policy}))
    first, second = two_versions(dicom_files)
    uid = sop_uid(first)
    with capture_logs() as logs:
        assert [r.status for r in await scu.astore(app.port, [first])] == [SUCCESS]
        (again,) = await scu.astore(app.port, [second])
    assert again.status == status, again.comment
    if status != SUCCESS:
        assert again.comment == f"SOP Instance already stored: {uid}"[:64]
    path = stored_path(app, uid)
    assert path is not None
    expected = first if kept == "first" else second
    assert dataset_bytes(path) == dataset_bytes(expected)
    root = app.archive
    assert archived_files(root) == [path]
    assert incoming_files(root) == []
    assert index_counts(app.db)["instances"] == 1
    # stored twice (replace), or stored once and the second seen as a duplicate
    assert store_outcomes(logs) == ["stored", {"reject": "0x0111", "replace": "replaced",
                                               "ignore": "already_stored"}[policy]]


async def test_replace_moves_the_file_when_the_path_changes(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config], scu: Scu,
        dicom_files: DicomFiles) -> None:
    app = await start_server(make_cfg({"storage.duplicate_policy": "replace"}))
    first, second = two_versions(dicom_files, PatientID="MOVED-PATIENT")
    uid = sop_uid(first)
    await scu.astore(app.port, [first])
    old = stored_path(app, uid)
    (result,) = await scu.astore(app.port, [second])
    assert result.ok
    new = stored_path(app, uid)
    assert old is not None and new is not None and old != new
    assert new.relative_to(app.archive).parts[0] == "MOVED-PATIENT"
    assert not old.exists()
    assert not old.parent.exists(), "emptied directories of the old copy are pruned"
    assert archived_files(app.archive) == [new]
    counts = index_counts(app.db)
    assert (counts["patients"], counts["instances"]) == (1, 1)


async def test_policy_reload_takes_effect(start_server: Callable[..., Any],
                                          make_cfg: Callable[..., Config], scu: Scu,
                                          dicom_files: DicomFiles, tmp_path: Path) -> None:
    """duplicate_policy is reloadable: the next C-STORE follows the new value."""
    config = tmp_path / "pacs.yaml"
    config.write_text("storage:\n  duplicate_policy: reject\n", encoding="utf-8")
    app = await start_server(make_cfg(path=config), reload_config=lambda: make_cfg(path=config))
    first, second = two_versions(dicom_files)
    await scu.astore(app.port, [first])
    assert (await scu.astore(app.port, [second]))[0].status == DUPLICATE
    config.write_text("storage:\n  duplicate_policy: replace\n", encoding="utf-8")
    assert app.reload() is True
    assert (await scu.astore(app.port, [second]))[0].status == SUCCESS
    path = stored_path(app, sop_uid(first))
    assert path is not None and dataset_bytes(path) == dataset_bytes(second)


# --------------------------------------------------------------------------- hostile IDs

HOSTILE_PATIENT_IDS = ["../../etc", "..", "/", "/etc/passwd", "a/../../b", "a\x00b",
                       "\x01\x1b[31m\x7f", "x" * 300, "", "   "]


def resolved(path: Path) -> Path:
    return path.resolve()


def all_files(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if p.is_file()}


async def test_patient_id_path_traversal(start_server: Callable[..., Any],
                                         make_cfg: Callable[..., Config], scu: Scu,
                                         tmp_path: Path, dicom_files: DicomFiles) -> None:
    # The archive sits two levels down, so "../../etc" would land inside tmp_path/a.
    nest = tmp_path / "a" / "b"
    app = await start_server(make_cfg(root=nest))
    sent = [dicom_files.generated(PatientID=pid, directory=tmp_path / "send")
            for pid in HOSTILE_PATIENT_IDS]
    results = await scu.astore(app.port, sent)
    assert [r.status for r in results] == [SUCCESS] * len(sent)
    root = resolved(app.archive)
    stored = archived_files(root)
    assert len(stored) == len(sent)
    for path in stored:
        assert path.resolve().is_relative_to(root)
        top = path.relative_to(root).parts[0]
        assert len(path.relative_to(root).parts) == 4
        assert not top.startswith(".") and all(32 < ord(c) < 127 for c in top), repr(top)
    # nothing anywhere else: only the archive, the index, the files we sent and the
    # server's identity lock (<archive>/.nodes)
    outside = all_files(tmp_path) - set(stored) - set(sent) - set((root / ".nodes").iterdir())
    assert {p for p in outside if not p.name.startswith("pacs.db")} == set()
    for path, pid in zip(sent, HOSTILE_PATIENT_IDS, strict=True):
        archived = stored_path(app, sop_uid(path))
        assert archived is not None
        assert dataset_bytes(archived) == dataset_bytes(path)
        expected_top = safe_component(pid.strip().rstrip("\x00")[:64])  # as indexed
        assert archived.relative_to(root).parts[0] == expected_top


# --------------------------------------------------------------------------- malformed

GARBAGE = {
    "ff": b"\xff" * 100,
    "zeros": b"\x00" * 100,
    "text": b"this is not dicom at all, just some text!!",
    "random": bytes((i * 7919 + 13) % 256 for i in range(300)),
    "empty": b"",
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_bytes_cannot_be_understood(server: RunningServer, scu: Scu,
                                                  dicom_files: DicomFiles, kind: str) -> None:
    sent = dicom_files.raw(GARBAGE[kind])
    with capture_logs() as logs:
        (result,) = await scu.astore(server.port, [sent])
    assert result.status == CANNOT_UNDERSTAND
    assert result.comment
    assert_nothing_stored(server)
    assert await scu.aecho(server.port) == SUCCESS
    assert store_outcomes(logs) == ["0xC000"]
    assert server.sample("pacs_dimse_requests_total", service="C-STORE", status="0xC000") == 1


def _without(keyword: str) -> bytes:
    ds = new_dataset()
    delattr(ds, keyword)
    return encode(ds)


def _with(**attrs: Any) -> bytes:
    return encode(new_dataset(**attrs))


@pytest.mark.parametrize(("body", "status", "comment"), [
    (_without("SOPInstanceUID"), DOES_NOT_MATCH, "SOPInstanceUID is missing"),
    (_without("StudyInstanceUID"), DOES_NOT_MATCH, "StudyInstanceUID is missing"),
    (_without("SeriesInstanceUID"), DOES_NOT_MATCH, "SeriesInstanceUID is missing"),
    (_with(SOPInstanceUID="../x"), DOES_NOT_MATCH, "SOPInstanceUID is not a valid UID: '../x'"),
    (_with(StudyInstanceUID="../../etc"), DOES_NOT_MATCH,
     "StudyInstanceUID is not a valid UID: '../../etc'"),
    (_with(SeriesInstanceUID="1.2.3/4"), DOES_NOT_MATCH,
     "SeriesInstanceUID is not a valid UID: '1.2.3/4'"),
    (_with(SOPInstanceUID="1." + "2" * 70), DOES_NOT_MATCH,
     "SOPInstanceUID is not a valid UID: '1.222"),
    (_with(SOPClassUID="not-a-uid"), DOES_NOT_MATCH, "SOPClassUID is not a valid UID: 'not-a-uid'"),
], ids=["no-sop", "no-study", "no-series", "sop-dotdot", "study-dotdot", "series-slash",
        "sop-too-long", "bad-class"])
async def test_bad_identifiers_are_refused(server: RunningServer, scu: Scu, dicom_files: DicomFiles,
                                           body: bytes, status: int, comment: str) -> None:
    sent = dicom_files.raw(body, sop_class="1.2.840.10008.5.1.4.1.1.2")
    (result,) = await scu.astore(server.port, [sent])
    assert result.status == status
    assert result.comment is not None and comment in result.comment
    assert_nothing_stored(server)


async def test_a_failure_does_not_end_the_association(server: RunningServer, scu: Scu,
                                                      dicom_files: DicomFiles) -> None:
    good_before = dicom_files.generated()
    bad = dicom_files.raw(GARBAGE["text"], sop_class="1.2.840.10008.5.1.4.1.1.2")
    good_after = dicom_files.generated()
    results = await scu.astore(server.port, [good_before, bad, good_after])
    assert [r.status for r in results] == [SUCCESS, CANNOT_UNDERSTAND, SUCCESS]
    assert index_counts(server.db)["instances"] == 2


# --------------------------------------------------------------------------- bad disk

async def test_unwritable_target_is_out_of_resources(server: RunningServer, scu: Scu,
                                                     dicom_files: DicomFiles) -> None:
    """The patient directory cannot be created (a file is in the way): 0xA700."""
    root = server.archive
    (root / "BLOCKED").write_bytes(b"a file where a directory should be")
    blocked = dicom_files.generated(PatientID="BLOCKED")
    (result,) = await scu.astore(server.port, [blocked])
    assert result.status == OUT_OF_RESOURCES
    assert result.comment and "archive write failed" in result.comment
    assert incoming_files(root) == []
    assert archived_files(root) == [root / "BLOCKED"]
    assert index_counts(server.db)["instances"] == 0
    # still up, and other patients are stored
    assert await scu.aecho(server.port) == SUCCESS
    fine = dicom_files.generated(PatientID="FINE")
    assert (await scu.astore(server.port, [fine]))[0].ok
    assert index_counts(server.db)["instances"] == 1
    # once the obstacle is gone the same instance goes in
    (root / "BLOCKED").unlink()
    assert (await scu.astore(server.port, [blocked]))[0].ok


async def test_incoming_directory_gone_fails_the_store(server: RunningServer, scu: Scu,
                                                           dicom_files: DicomFiles) -> None:
    """.incoming replaced by a file: pynetdicom cannot even buffer the dataset.

    Whatever fails first, the association must end with a failure (no success
    status), nothing may be indexed, and the server must keep answering.
    """
    # The server's own receive directory, <archive>/.incoming/<identity>.
    (incoming,) = (server.archive / ".incoming").iterdir()
    os.rmdir(incoming)
    incoming.write_bytes(b"in the way")
    sent = dicom_files.generated()
    try:
        results = await scu.astore(server.port, [sent])
        assert results[0].status != SUCCESS
    except ConnectionError:
        pass  # aborted: also not a success
    finally:
        incoming.unlink()
        incoming.mkdir()
    assert index_counts(server.db)["instances"] == 0
    assert await scu.aecho(server.port) == SUCCESS
    assert (await scu.astore(server.port, [dicom_files.generated()]))[0].ok


async def test_uid_mismatch_between_request_and_dataset(server: RunningServer, scu: Scu,
                                                        dicom_files: DicomFiles) -> None:
    """The dataset's own SOP Instance UID names the stored instance."""
    ds = new_dataset()
    sent = dicom_files.raw(encode(ds), sop_class=str(ds.SOPClassUID),
                           sop_instance=generate_uid())
    (result,) = await scu.astore(server.port, [sent])
    assert result.ok
    assert stored_path(server, str(ds.SOPInstanceUID)) is not None
    assert stored_path(server, sop_uid(sent)) is None


@pytest.mark.parametrize(("policy", "status"), [("reject", DUPLICATE), ("ignore", SUCCESS)])
async def test_duplicate_under_another_patient_id(start_server: Callable[..., Any],
                                                  make_cfg: Callable[..., Config], scu: Scu,
                                                  dicom_files: DicomFiles, policy: str,
                                                  status: int) -> None:
    """Same SOP Instance UID, other PatientID (so another path): the first copy stays."""
    app = await start_server(make_cfg({"storage.duplicate_policy": policy}))
    first, second = two_versions(dicom_files, PatientID="SOMEONE-ELSE")
    uid = sop_uid(first)
    assert (await scu.astore(app.port, [first]))[0].ok
    path = stored_path(app, uid)
    (again,) = await scu.astore(app.port, [second])
    assert again.status == status
    root = app.archive
    assert archived_files(root) == [path]
    assert not (root / "SOMEONE-ELSE").exists()
    assert path is not None and dataset_bytes(path) == dataset_bytes(first)
    assert index_counts(app.db)["instances"] == 1


async def test_unindexed_leftover_file_is_taken_over(server: RunningServer, scu: Scu,
                                                     dicom_files: DicomFiles) -> None:
    """A file at the target path that the index does not know (an interrupted store)
    does not block the instance: it is replaced and indexed."""
    sent = dicom_files.generated(PatientID="LEFTOVER")
    ds = pydicom.dcmread(sent)
    root = server.archive
    target = (root / "LEFTOVER" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
              / f"{ds.SOPInstanceUID}.dcm")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale half-written copy")
    (result,) = await scu.astore(server.port, [sent])
    assert result.ok, result.comment
    assert stored_path(server, str(ds.SOPInstanceUID)) == target
    assert dataset_bytes(target) == dataset_bytes(sent)
