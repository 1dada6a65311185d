"""How a C-MOVE's sub-operations go out on the event-driven transport.

- The destination's DUL run by the sending thread (dicom/lent_dul.py): every
  C-STORE-RQ written by that thread and every response read by it, and the cases where
  it gives the DUL back (a response upstream decodes, the destination aborting,
  C-CANCEL, the release) keep upstream's statuses and exact counts, and leave no
  thread of the destination's association behind.
- Pending C-MOVE-RSPs at most one per `PENDING_INTERVAL_S` (dicom/pending.py,
  PS3.4 C.4.2.3.1): the first at once, one per sub-operation when each is slower, the
  counts of every response and the final one exact, for pynetdicom and movescu.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from pacs_server.dicom import lent_dul, pending
from support.config import FAST_STORAGE, peer, server_config
from support.dcmtk import QR_TOOLS, movescu
from support.instances import SECONDARY_CAPTURE, new_dataset
from support.scp import start_listener
from support.scu import (
    CANCEL,
    MOVE_S,
    NATIVE,
    PENDING,
    SUCCESS,
    VERIFICATION,
    Scu,
    finals_cancelling,
    identifier,
)
from support.server import RunningServer

pytestmark = pytest.mark.skipif(os.environ.get("PACS_TRANSPORT", "events") != "events",
                                reason="the lent DUL is the event-driven transport's")
N = 12
ABORT_AFTER = 4


class Destination:
    """A pynetdicom Storage SCP whose answer per instance the test picks (`mode`)."""

    def __init__(self, ae_title: str) -> None:
        self.mode = "ok"
        self.received: list[str] = []
        self.release_seen = threading.Event()
        ae = AE(ae_title=ae_title)
        ae.network_timeout = 30
        ae.add_supported_context(VERIFICATION)
        ae.add_supported_context(SECONDARY_CAPTURE, list(NATIVE))
        self.server = start_listener(ae, ("127.0.0.1", 0), evt_handlers=[
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, lambda _e: self.release_seen.set())])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> Any:
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        n = len(self.received)
        if self.mode == "comment" and n % 2 == 0:
            # Not a plain C-STORE-RSP: upstream's decode, in the borrowing thread.
            status = Dataset()
            status.Status = 0xB000
            status.ErrorComment = "coerced on purpose"
            return status
        if self.mode == "abort" and n == ABORT_AFTER + 1:
            event.assoc.abort()
        if self.mode == "slow":
            time.sleep(0.05)
        return SUCCESS

    def reset(self, mode: str) -> None:
        self.mode = mode
        self.received.clear()
        self.release_seen.clear()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dest = Destination("LENTDEST")
    srv = RunningServer(server_config(tmp_path_factory.mktemp("lent"), {
        **FAST_STORAGE, "peers": [peer("LENTDEST", dest.port)]})).start()
    try:
        study = "1.2.826.0.1.3680043.8.498.7201"
        items = [new_dataset(sop_class=SECONDARY_CAPTURE, modality="OT",
                             StudyInstanceUID=study, InstanceNumber=n + 1) for n in range(N)]
        assert [r.status for r in Scu().store_datasets(srv.port, items)] == [SUCCESS] * N
        yield {"server": srv, "dest": dest, "study": study,
               "uids": [str(ds.SOPInstanceUID) for ds in items]}
    finally:
        srv.stop()
        dest.server.shutdown()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the lent DUL wrote a request and read its response itself."""
    seen: Counter[str] = Counter()
    real_write, real_await = lent_dul.write, lent_dul.await_response

    def write(*args: Any) -> None:
        seen["write"] += 1
        real_write(*args)

    def await_response(*args: Any) -> Any:
        got = real_await(*args)
        seen["response" if got is not None else "given back"] += 1
        return got
    monkeypatch.setattr(lent_dul, "write", write)
    monkeypatch.setattr(lent_dul, "await_response", await_response)
    return seen


def lent_threads_end() -> bool:
    """Whether every DUL thread of an outgoing association has ended (within 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(isinstance(t, lent_dul.LendingDUL) and t.is_alive()
                   for t in threading.enumerate()):
            return True
        time.sleep(0.05)
    return False


def counts(ds: Dataset) -> tuple[int, int, int]:
    return (int(ds.NumberOfCompletedSuboperations), int(ds.NumberOfFailedSuboperations),
            int(ds.NumberOfWarningSuboperations))


def move(setup: dict[str, Any]) -> list[Any]:
    return Scu().move(setup["server"].port, identifier(
        "STUDY", StudyInstanceUID=setup["study"]), "LENTDEST")


def test_every_sub_operation_sent_and_answered_in_the_sending_thread(
        setup: dict[str, Any], calls: Counter[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "PENDING_INTERVAL_S", 0.0)     # one per sub-operation
    setup["dest"].reset("ok")
    rsps = move(setup)
    assert [r.status for r in rsps] == [PENDING] * N + [SUCCESS]
    remaining = [int(r.status_ds.NumberOfRemainingSuboperations) for r in rsps[:-1]]
    assert remaining == list(range(N - 1, -1, -1))
    assert counts(rsps[-1].status_ds) == (N, 0, 0)
    assert sorted(setup["dest"].received) == sorted(setup["uids"])
    assert calls == {"write": N, "response": N}, calls
    assert setup["dest"].release_seen.wait(10)
    assert lent_threads_end()


def test_a_response_upstream_decodes_is_read_in_the_same_thread(
        setup: dict[str, Any], calls: Counter[str]) -> None:
    setup["dest"].reset("comment")
    rsps = move(setup)
    assert rsps[-1].status == 0xB000
    assert counts(rsps[-1].status_ds) == (N // 2, 0, N // 2)
    assert calls == {"write": N, "response": N}, calls
    assert lent_threads_end()


def test_destination_abort_fails_the_rest_and_ends_its_threads(
        setup: dict[str, Any], calls: Counter[str]) -> None:
    setup["dest"].reset("abort")
    started = time.monotonic()
    rsps = move(setup)
    # Well within the DIMSE timeout: the abort is seen at once, not waited out.
    assert time.monotonic() - started < 20
    final = rsps[-1]
    assert final.status == 0xB000
    assert counts(final.status_ds) == (ABORT_AFTER, N - ABORT_AFTER, 0)
    failed = final.identifier.FailedSOPInstanceUIDList
    assert len(failed) == N - ABORT_AFTER and set(failed) <= set(setup["uids"])
    assert calls["write"] == ABORT_AFTER + 1 and calls["response"] == ABORT_AFTER + 1
    assert lent_threads_end()


def test_c_cancel_between_sub_operations(setup: dict[str, Any], calls: Counter[str]) -> None:
    """0xFE00 with the counts so far (PS3.4 C.4.2.3.1); the destination released."""
    setup["dest"].reset("slow")
    with Scu().associate(setup["server"].port, [(MOVE_S, NATIVE)]) as assoc:
        finals = finals_cancelling(assoc.send_c_move(
            identifier("STUDY", StudyInstanceUID=setup["study"]), "LENTDEST", MOVE_S,
            msg_id=11), 3, lambda: assoc.send_c_cancel(11, query_model=MOVE_S))
        assert [int(f.Status) for f in finals] == [CANCEL]
        done, failed, warning = counts(finals[0])
        assert 3 <= done < N and (failed, warning) == (0, 0)
        assert int(finals[0].NumberOfRemainingSuboperations) == N - done
        assert len(setup["dest"].received) == done
        assert int(assoc.send_c_echo().Status) == SUCCESS
    assert calls["write"] == done and calls["response"] == done
    assert setup["dest"].release_seen.wait(10)
    assert lent_threads_end()


def pending_counts(rsps: list[Any]) -> list[tuple[int, int, int, int]]:
    return [(int(r.status_ds.NumberOfRemainingSuboperations), *counts(r.status_ds))
            for r in rsps if r.status == PENDING]


def test_pending_responses_coalesced_keep_exact_counts(
        setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Sub-operations faster than the interval: only the first has a pending response,
    and the final one still counts them all."""
    monkeypatch.setattr(pending, "PENDING_INTERVAL_S", 3600.0)
    setup["dest"].reset("comment")
    rsps = move(setup)
    assert [r.status for r in rsps] == [PENDING, 0xB000]
    assert pending_counts(rsps) == [(N - 1, 1, 0, 0)]
    assert counts(rsps[-1].status_ds) == (N // 2, 0, N // 2)
    assert sorted(setup["dest"].received) == sorted(setup["uids"])


def test_one_pending_response_per_slow_sub_operation(setup: dict[str, Any]) -> None:
    """Each sub-operation longer than the interval (50 ms here) gets its own pending
    response, as from dcmtk and Orthanc."""
    assert pending.PENDING_INTERVAL_S < 0.05
    setup["dest"].reset("slow")
    rsps = move(setup)
    assert [r.status for r in rsps] == [PENDING] * N + [SUCCESS]
    assert pending_counts(rsps) == [(N - 1 - k, k + 1, 0, 0) for k in range(N)]


@pytest.mark.dcmtk(*QR_TOOLS)
def test_movescu_with_coalesced_pending_responses(
        setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pending, "PENDING_INTERVAL_S", 3600.0)
    setup["dest"].reset("ok")
    result = movescu(setup["server"].port, "STUDY",
                     [f"StudyInstanceUID={setup['study']}"], "LENTDEST")
    assert result.returncode == 0, result.output[-3000:]
    assert result.statuses == [PENDING, SUCCESS], result.output[-3000:]
    assert (result.counts()["completed"], result.counts()["failed"]) == (N, 0)
    assert sorted(setup["dest"].received) == sorted(setup["uids"])
