"""dcmtk against `python -m pacs_server`: echoscu, storescu of a tree, many storescu at once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from support.archive import archived_files, incoming_files, index_rows, wait_for_rows
from support.dcmtk import concurrent_storescu
from support.instances import DicomFiles, file_meta, sender_dirs, sop_uid

pytestmark = pytest.mark.dcmtk


def content(path: Path) -> dict[str, object]:
    """Every data element's value except group lengths and dataset trailing padding."""
    ds = pydicom.dcmread(path)
    return {str(e.tag): e.value for e in ds
            if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def run(dcmtk: Any, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk.tool(argv[0]), *argv[1:]], env=dcmtk.env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_echoscu(run_pacs: Callable[..., Any], dcmtk: Any) -> None:
    server = run_pacs()
    done = run(dcmtk, "echoscu", "-aet", "ECHOSCU", "-aec", "PACS", "127.0.0.1",
               str(server.port))
    assert done.returncode == 0, done.stderr
    # and the association was logged with the calling AE
    closed = server.wait_for_event("association.closed", calling_ae="ECHOSCU")
    assert closed["outcome"] == "released"
    assert closed["operations"] == {"C-ECHO": 1}
    assert server.stop() == 0


def test_echoscu_wrong_called_ae_when_required(run_pacs: Callable[..., Any], dcmtk: Any,
                                               tmp_path: Path) -> None:
    config = tmp_path / "pacs.yaml"
    config.write_text("server:\n  require_called_ae_title: true\n")
    server = run_pacs(config=config)
    wrong = run(dcmtk, "echoscu", "-aec", "NOTPACS", "127.0.0.1", str(server.port))
    assert wrong.returncode != 0
    right = run(dcmtk, "echoscu", "-aec", "PACS", "127.0.0.1", str(server.port))
    assert right.returncode == 0, right.stderr


def test_echoscu_refused_calling_ae_reads_the_reason(run_pacs: Callable[..., Any],
                                                     dcmtk: Any, tmp_path: Path) -> None:
    config = tmp_path / "pacs.yaml"
    config.write_text("access_control:\n  allowed_ae_titles: [GOODSCU]\n")
    server = run_pacs(config=config)
    for _ in range(5):
        refused = run(dcmtk, "echoscu", "-aet", "BADSCU", "-aec", "PACS", "127.0.0.1",
                      str(server.port))
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0, out
        # The whole A-ASSOCIATE-RJ read (PS3.8 9.3.4), not a reset or a closed socket.
        assert "Association Rejected" in out, out
        assert "Calling AE Title Not Recognized" in out, out
    rejected = server.wait_for_event("association.rejected", calling_ae="BADSCU")
    assert rejected["reason"] == "calling_ae_not_allowed"
    assert server.stop() == 0


def test_storescu_directory_tree(run_pacs: Callable[..., Any], dcmtk: Any, tmp_path: Path,
                                 dicom_files: DicomFiles) -> None:
    server = run_pacs()
    tree = tmp_path / "tree"
    sent = [dicom_files.generated(directory=tree, PatientID="TREE")]
    sent += [dicom_files.generated(directory=tree / "a", modality="MR",
                                   sop_class="1.2.840.10008.5.1.4.1.1.4") for _ in range(3)]
    sent += [dicom_files.fresh("CT_small.dcm", directory=tree / "a" / "b") for _ in range(2)]
    sent += [dicom_files.fresh("MR_small.dcm", directory=tree / "c") for _ in range(2)]
    sent += [dicom_files.fresh("rtplan.dcm", directory=tree / "c" / "d")]
    done = run(dcmtk, "storescu", "-aet", "STORESCU", "-aec", "PACS", "+sd", "+r",
               "127.0.0.1", str(server.port), str(tree))
    assert done.returncode == 0, done.stdout + done.stderr
    db = tmp_path / "pacs.db"
    rows = wait_for_rows(db, len(sent))
    root = tmp_path / "archive"
    for path in sent:
        uid = sop_uid(path)
        assert uid in rows, f"{path.name} not indexed"
        stored = root / rows[uid]
        meta = file_meta(stored)
        assert meta.SourceApplicationEntityTitle == "STORESCU"
        # storescu re-encodes (drops group lengths and trailing padding, may pick another
        # uncompressed syntax), so compare content; byte equality is checked in
        # tests/integration/test_store_matrix.py where the sender keeps the bytes.
        assert content(stored) == content(path), path.name
    assert len(rows) == len(sent)
    # dcmtk itself reads back every archived file
    archived = archived_files(root)
    assert len(archived) == len(sent)
    dump = run(dcmtk, "dcmdump", "-q", "+P", "0008,0018", *map(str, archived))
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count("(0008,0018) UI") == len(sent)
    assert server.stop() == 0
    assert incoming_files(root) == []


def test_concurrent_storescu_processes(run_pacs: Callable[..., Any], dcmtk: Any,
                                       tmp_path: Path, dicom_files: DicomFiles) -> None:
    server = run_pacs()
    senders, per_sender = 8, 4
    dirs, uids = sender_dirs(dicom_files, tmp_path, senders, per_sender)
    done = concurrent_storescu(dcmtk, server.port, dirs, timeout=90)
    assert [code for code, _ in done] == [0] * senders, "\n".join(out for _, out in done)
    rows = wait_for_rows(tmp_path / "pacs.db", senders * per_sender)
    assert set(rows) == uids
    root = tmp_path / "archive"
    assert sorted(root / r for r in rows.values()) == archived_files(root)
    assert server.stop() == 0
    assert index_rows(tmp_path / "pacs.db") == rows
