"""`store_scp`, the receive-only tool, as a subprocess: files only, indexed, --accept."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from support.archive import archived_files, incoming_files, index_rows
from support.instances import DicomFiles, dataset_bytes, file_meta, sop_uid
from support.scu import SCU_AE, SUCCESS, Scu

DUPLICATE = 0x0111


def test_files_only_without_index(run_store_scp: Callable[..., Any], tmp_path: Path,
                                  dicom_files: DicomFiles) -> None:
    scp = run_store_scp()
    received = tmp_path / "received"
    sent = [dicom_files.generated(PatientID="A"), dicom_files.generated(PatientID="B"),
            dicom_files.fresh("MR_small_jp2klossless.dcm")]
    results = Scu().store(scp.port, sent)
    assert [r.status for r in results] == [SUCCESS] * 3
    stored = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
              for p in archived_files(received)}
    assert set(stored) == {sop_uid(p) for p in sent}
    for path in sent:
        assert dataset_bytes(stored[sop_uid(path)]) == dataset_bytes(path)
        assert file_meta(stored[sop_uid(path)]).SourceApplicationEntityTitle == SCU_AE
    # without an index, a duplicate is recognised by its file
    assert Scu().store(scp.port, [sent[0]])[0].status == DUPLICATE
    assert scp.stop() == 0
    assert not list(tmp_path.rglob("*.db")), "no index file without --index-db"
    assert incoming_files(received) == []
    summary = scp.stderr
    assert "store_scp summary after" in summary
    assert "received   3 instances" in summary
    assert "duplicates 1, failed 0" in summary
    assert "archive    3 files" in summary


def test_with_index_db(run_store_scp: Callable[..., Any], tmp_path: Path,
                       dicom_files: DicomFiles) -> None:
    db = tmp_path / "idx" / "index.db"
    scp = run_store_scp("--index-db", str(db))
    assert " (indexed)" in scp.stderr
    sent = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("rtplan.dcm")]
    assert [r.status for r in Scu().store(scp.port, sent)] == [SUCCESS, SUCCESS]
    rows = index_rows(db)
    assert set(rows) == {sop_uid(p) for p in sent}
    received = tmp_path / "received"
    for path in sent:
        assert dataset_bytes(received / rows[sop_uid(path)]) == dataset_bytes(path)
    assert Scu().store(scp.port, [sent[1]])[0].status == DUPLICATE
    scp.signal(signal.SIGINT)
    assert scp.wait(30) == 0
    assert "received   2 instances" in scp.stderr


@pytest.mark.parametrize("accept", ["CT", "CT Image Storage", "1.2.840.10008.5.1.4.1.1.2"])
def test_accept_narrows_the_classes(run_store_scp: Callable[..., Any], tmp_path: Path,
                                    dicom_files: DicomFiles, accept: str) -> None:
    scp = run_store_scp("--accept", accept)
    ct = dicom_files.fresh("CT_small.dcm")
    mr = dicom_files.fresh("MR_small.dcm")
    with pytest.raises(ValueError, match="No presentation context"):
        Scu().store(scp.port, [mr])
    assert Scu().store(scp.port, [ct])[0].status == SUCCESS
    assert [p.name for p in archived_files(tmp_path / "received")] == [f"{sop_uid(ct)}.dcm"]
    assert scp.stop() == 0


def test_accept_a_list(run_store_scp: Callable[..., Any], dicom_files: DicomFiles) -> None:
    scp = run_store_scp("--accept", "CT,MR")
    sent = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("MR_small.dcm")]
    assert [r.status for r in Scu().store(scp.port, sent)] == [SUCCESS, SUCCESS]
    with pytest.raises(ValueError):
        Scu().store(scp.port, [dicom_files.fresh("rtplan.dcm")])
    assert scp.stop() == 0


def test_flat_naming_and_replace(run_store_scp: Callable[..., Any], tmp_path: Path,
                                 dicom_files: DicomFiles) -> None:
    scp = run_store_scp("--naming", "flat", "--duplicates", "replace")
    first = dicom_files.fresh("CT_small.dcm", PatientName="First")
    ds = pydicom.dcmread(first)
    second = dicom_files.fresh("CT_small.dcm", PatientName="Second^Name")
    ds2 = pydicom.dcmread(second)
    ds2.SOPInstanceUID = ds.SOPInstanceUID
    ds2.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds2.save_as(second, enforce_file_format=True)
    assert Scu().store(scp.port, [first])[0].status == SUCCESS
    target = tmp_path / "received" / f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(target) == dataset_bytes(first)
    assert Scu().store(scp.port, [second])[0].status == SUCCESS
    assert dataset_bytes(target) == dataset_bytes(second)
    assert archived_files(tmp_path / "received") == [target]
    assert scp.stop() == 0


@pytest.mark.dcmtk
def test_storescu_into_store_scp(run_store_scp: Callable[..., Any], tmp_path: Path,
                                 dicom_files: DicomFiles, dcmtk: Any) -> None:
    scp = run_store_scp("--index-db", str(tmp_path / "index.db"))
    tree = tmp_path / "tree"
    sent = [dicom_files.generated(directory=tree) for _ in range(5)]
    done = subprocess.run([dcmtk.tool("storescu"), "-aec", "STORESCP", "+sd", "127.0.0.1",
                           str(scp.port), str(tree)], env=dcmtk.env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(index_rows(tmp_path / "index.db")) == {sop_uid(p) for p in sent}
    assert scp.stop() == 0


def run_store_scp_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs_server.store_scp", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--accept", "NOPE"], "store_scp: <defaults>: storage.accepted_sop_classes: 'NOPE'"),
    (["--accept", "CT", "--config", "{missing}"], "store_scp: {missing}: cannot read file"),
])
def test_config_errors_exit_2(tmp_path: Path, argv: list[str], expected: str) -> None:
    missing = tmp_path / "missing.yaml"
    done = run_store_scp_cli("0", "STORESCP", "--storage-dir", str(tmp_path / "r"),
                             *[a.format(missing=missing) for a in argv], cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(expected.format(missing=missing))


def test_bad_ae_title_exits_2(tmp_path: Path) -> None:
    done = run_store_scp_cli("0", "AE\\WITH\\BACKSLASH", "--storage-dir", str(tmp_path / "r"),
                             cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("store_scp: <defaults>: server.ae_title: ")


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_store_scp_cli(str(port), "STORESCP", "--storage-dir", str(tmp_path / "r"),
                                 "--host", "127.0.0.1", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [f"store_scp: port {port} on 127.0.0.1 is already in use"], done.stderr
