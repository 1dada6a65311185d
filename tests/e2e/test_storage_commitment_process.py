"""Storage Commitment against `python -m pacs_server`: a request acknowledged with
Success survives a crash (SIGKILL) and its report is delivered exactly once after the
restart, over a new association to the requester that was unreachable before."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydicom.uid import generate_uid

from support.archive import query_index
from support.commitment import RequesterScp, peers, request_commitment, stored
from support.polling import free_port


def test_acknowledged_request_survives_sigkill_and_is_reported_once(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    requester_port = free_port()                  # the requester's listener is down
    config = tmp_path / "pacs.yaml"
    config.write_text(yaml.safe_dump({
        "commitment": {"retry_interval": 0.2, "max_retry_interval": 0.5},
        **peers(requester_port),
    }), encoding="utf-8")
    server = run_pacs(config=config)
    refs = stored(server.port, 2)
    uid = generate_uid()
    # Released right after the N-ACTION-RSP, then the server is killed at once.
    assert request_commitment(server.port, refs, transaction_uid=uid).Status == 0x0000
    server.kill()

    db = tmp_path / "pacs.db"
    assert [tuple(r) for r in query_index(db, "SELECT transaction_uid, state FROM commitments")
            ] == [(uid, "pending")]
    scp = RequesterScp(requester_port)
    try:
        again = run_pacs(config=config)
        delivered = again.wait_for_event("commitment.delivered", transaction_uid=uid)
        assert delivered["via"] == "new association" and delivered["event_type"] == 1
        how, event_type, info = scp.reports.wait()
        assert (how, event_type, info.TransactionUID) == ("new", 1, uid)
        assert {str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence} == {
            inst for _, inst in refs}
        time.sleep(1.0)                            # several retry intervals
        assert len(scp.reports.got) == 1
        assert again.stop() == 0
    finally:
        scp.stop()
    assert [tuple(r) for r in query_index(db, "SELECT state FROM commitments")] == [
        ("delivered",)]
