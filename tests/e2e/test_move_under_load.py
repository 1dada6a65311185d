"""A 300-instance C-MOVE with every core busy loses no sub-operation.

pynetdicom's requestor reactor used to be able to take a sub-operation's C-STORE-RSP off
the DIMSE queue while the sending thread waited for it (dicom/transport.py,
`ExclusiveDimse`); under CPU load that lost sub-operations and stalled the C-MOVE for the
DIMSE timeout. Here the server moves one 300-instance study while a busy-loop process
runs on each core, to a dcmtk storescp (asked by movescu) and to a pynetdicom Storage SCP
(asked by a pynetdicom SCU): every instance arrives and the final counts say so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from support.config import FAST_STORAGE, peer, server_config
from support.dcmtk import QR_TOOLS, Storescp, movescu
from support.instances import new_dataset
from support.scp import StorageScp
from support.scu import SUCCESS, Scu, identifier
from support.server import RunningServer

pytestmark = pytest.mark.dcmtk(*QR_TOOLS)

INSTANCES = 300
HOGS_PER_CORE = 3


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server holding one 300-instance study, and both destinations."""
    root = tmp_path_factory.mktemp("move-load")
    storescp = Storescp(root / "storescp", ae_title="DCMDEST")
    pydest = StorageScp("PYDEST")
    cfg = server_config(root, {**FAST_STORAGE, "server.dimse_timeout": 20,
                               "peers": [peer("DCMDEST", storescp.port),
                                         peer("PYDEST", pydest.port)]})
    srv = RunningServer(cfg).start()
    try:
        study_uid, series_uid = "1.2.826.0.1.3680043.8.498.7001", "1.2.826.0.1.3680043.8.498.7002"
        datasets = [new_dataset(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                                InstanceNumber=i + 1) for i in range(INSTANCES)]
        results = Scu().store_datasets(srv.port, datasets)
        assert [r.status for r in results] == [SUCCESS] * INSTANCES
        yield {"server": srv, "storescp": storescp, "pydest": pydest, "study": study_uid,
               "uids": {str(ds.SOPInstanceUID) for ds in datasets}}
    finally:
        srv.stop()
        storescp.stop()
        pydest.stop()


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """One busy-loop process per core for the duration of the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(HOGS_PER_CORE * (os.cpu_count() or 2))]
    try:
        yield
    finally:
        for proc in hogs:
            proc.kill()
        for proc in hogs:
            proc.wait(10)


def no_response_lost(caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom logs a response its reactor took from the sender as unexpected."""
    lost = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
    assert lost == []


def test_movescu_to_storescp_under_cpu_load(study: dict[str, Any], cpu_hog: None,
                                            caplog: pytest.LogCaptureFixture) -> None:
    result = movescu(study["server"].port, "STUDY", [f"StudyInstanceUID={study['study']}"],
                     "DCMDEST", timeout=300)
    assert result.final_status == SUCCESS, result.output[-3000:]
    counts = result.counts()
    assert (counts["completed"], counts["failed"], counts["warning"]) == (INSTANCES, 0, 0)
    assert set(study["storescp"].files()) == study["uids"]
    no_response_lost(caplog)


def test_pynetdicom_move_to_pynetdicom_scp_under_cpu_load(
        study: dict[str, Any], cpu_hog: None, caplog: pytest.LogCaptureFixture) -> None:
    rsps = Scu().move(study["server"].port, identifier("STUDY", StudyInstanceUID=study["study"]),
                      "PYDEST")
    final = rsps[-1]
    assert final.status == SUCCESS
    assert int(final.status_ds.NumberOfCompletedSuboperations) == INSTANCES
    assert int(final.status_ds.NumberOfFailedSuboperations) == 0
    assert set(study["pydest"].received) == study["uids"]
    # Pending responses at most one per pending.PENDING_INTERVAL_S, the first at once,
    # their counts in order; then the final.
    remaining = [int(r.status_ds.NumberOfRemainingSuboperations) for r in rsps[:-1]]
    assert 1 <= len(remaining) <= INSTANCES and remaining[0] == INSTANCES - 1
    assert remaining == sorted(remaining, reverse=True) and len(set(remaining)) == len(remaining)
    no_response_lost(caplog)

