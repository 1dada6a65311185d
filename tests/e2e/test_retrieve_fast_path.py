"""getscu and movescu of a study go through dicom/store_send.py on the event-driven
transport: every C-STORE-RQ from the file, every C-STORE-RSP read without pydicom, every
C-GET/C-MOVE response as finished PDUs; and what arrives is the archived data set."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from pacs_server.config import Config
from pacs_server.dicom import file_sending, lent_dul, pending, response_read, store_send
from support.archive import archived_by_uid
from support.config import peer
from support.dcmtk import QR_TOOLS, Storescp, getscu, movescu
from support.instances import DicomFiles, dataset_bytes
from support.scu import Scu
from support.server import RunningServer

pytestmark = [
    pytest.mark.dcmtk(*QR_TOOLS),
    pytest.mark.skipif(os.environ.get("PACS_TRANSPORT", "events") != "events",
                       reason="the fast path is the event-driven transport's"),
]
N = 6


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each fast-path function ran and did its job (the real functions run)."""
    seen: Counter[str] = Counter()

    def counting(name: str, ok: Callable[[Any], bool], module: Any = store_send) -> None:
        real = getattr(module, name)

        def spy(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            seen[name if ok(result) else f"{name}: not taken"] += 1
            return result
        monkeypatch.setattr(module, name, spy)

    counting("send_file", bool, file_sending)
    counting("store_response", lambda r: r is not None)
    counting("response_pdus", lambda r: r is not None)
    counting("pdus", bool, pending.PendingResponses)
    counting("_take_response", bool, response_read.ResponseReadingDUL)
    counting("await_response", lambda r: r is not None, lent_dul)
    return seen


async def test_get_and_move_take_the_fast_path(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config], scu: Scu,
        dicom_files: DicomFiles, tmp_path: Path, calls: Counter[str]) -> None:
    dest = Storescp(tmp_path / "dest", ae_title="DEST")
    try:
        srv: RunningServer = await start_server(make_cfg(
            {"peers": [peer("DEST", dest.port)], "logging.level": "warning"}))
        first = dicom_files.fresh("CT_small.dcm")
        study = str(dcmread(first).StudyInstanceUID)
        files = [first] + [dicom_files.fresh("CT_small.dcm", new_study=False,
                                             StudyInstanceUID=study) for _ in range(N - 1)]
        assert all(r.status == 0 for r in await asyncio.to_thread(scu.store, srv.port, files))
        archived = archived_by_uid(srv.archive)
        keys = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}"]

        got = await asyncio.to_thread(getscu, srv.port, "STUDY", keys, tmp_path / "get")
        assert got.returncode == 0, got.stderr
        received = {p.name: p for p in (tmp_path / "get").iterdir()}
        assert len(received) == N
        moved = await asyncio.to_thread(movescu, srv.port, "STUDY", keys, "DEST")
        assert moved.returncode == 0, moved.stderr
        for uid, path in dest.files().items():
            assert dataset_bytes(path) == dataset_bytes(archived[uid])
        assert len(dest.files()) == N
    finally:
        dest.stop()
    # N sub-operations per retrieve; pending responses from dicom/pending.py's
    # template (N for the C-GET, 1 to N for the C-MOVE: at most one per
    # PENDING_INTERVAL_S) + 1 final per retrieve; every C-STORE-RSP read by the DUL thread
    # (dicom/response_read.py), so none reaches RetrieveDimse's own read; the C-MOVE's
    # read in the sending thread (dicom/lent_dul.py).
    assert N + 1 <= calls["pdus"] <= 2 * N, calls
    taken = {k: calls[k] for k in ("send_file", "store_response", "response_pdus",
                                   "_take_response", "send_file: not taken",
                                   "response_pdus: not taken", "await_response",
                                   "await_response: not taken")}
    assert taken == {"send_file": 2 * N, "store_response": 0, "_take_response": 2 * N,
                     "response_pdus": 2, "send_file: not taken": 0,
                     "response_pdus: not taken": 0, "await_response": N,
                     "await_response: not taken": 0}, calls
