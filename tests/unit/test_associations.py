"""dicom/associations.py: AssociationTracker on a real pynetdicom acceptor, fed by real
associations; its records, its metric samples (a fresh registry) and its log lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pynetdicom import AE, evt
from structlog.testing import capture_logs

from pacs_server.dicom.associations import AssociationRecord, AssociationTracker
from pacs_server.metrics import Metrics
from support.polling import wait_until
from support.scp import start_listener
from support.scu import NATIVE, SUCCESS, VERIFICATION, Scu

ACCEPTOR = "ACCEPTOR"


@dataclass
class Acceptor:
    """A Verification SCP whose C-ECHO handler reports `statuses` to the tracker, one
    per request, as the service handlers do (C-ECHO answers Success regardless)."""

    tracker: AssociationTracker
    metrics: Metrics
    port: int = 0
    statuses: list[int] = field(default_factory=list)
    nbytes: int = 0
    seen: list[AssociationRecord | None] = field(default_factory=list)

    def on_echo(self, event: Any) -> int:
        self.seen.append(self.tracker.record(event))
        status = self.statuses.pop(0) if self.statuses else SUCCESS
        self.tracker.operation(event, "C-ECHO", status, self.nbytes)
        return SUCCESS

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def start_acceptor() -> Iterator[Callable[..., Acceptor]]:
    servers: list[Any] = []

    def start(allowed: list[str] | None = None) -> Acceptor:
        metrics = Metrics(CollectorRegistry())
        acceptor = Acceptor(AssociationTracker(metrics), metrics)
        ae = AE(ae_title=ACCEPTOR)
        ae.add_supported_context(VERIFICATION, list(NATIVE))
        if allowed is not None:
            ae.require_calling_aet = allowed
        server = start_listener(
            ae, ("127.0.0.1", 0),
            evt_handlers=[*acceptor.tracker.handlers(), (evt.EVT_C_ECHO, acceptor.on_echo)])
        servers.append(server)
        acceptor.port = int(server.server_address[1])
        return acceptor

    yield start
    for server in servers:
        server.shutdown()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def wait_for_event(logs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The acceptor logs from its own threads: wait for the line to be there."""
    wait_until(lambda: bool(events(logs, name)), 10, f"a {name} log event")
    (event,) = events(logs, name)
    return event


def echo(port: int, times: int, calling: str = "TRACKED", abort: bool = False) -> None:
    with Scu(calling).associate(port, called=ACCEPTOR) as assoc:
        for _ in range(times):
            assert assoc.send_c_echo().Status == SUCCESS
        if abort:
            assoc.abort()


def test_a_released_association(start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    acceptor.nbytes = 100
    with capture_logs() as logs:
        echo(acceptor.port, 2)
        closed = wait_for_event(logs, "association.closed")
    accepted = wait_for_event(logs, "association.accepted")
    assert accepted["calling_ae"] == "TRACKED" and accepted["called_ae"] == ACCEPTOR
    assert accepted["peer"].startswith("127.0.0.1:")
    assert (accepted["accepted_contexts"], accepted["rejected_contexts"]) == (1, 0)
    assert accepted["contexts"] == ["Verification SOP Class / Explicit VR Little Endian"]
    assert accepted["log_level"] == "info"
    assert {k: closed[k] for k in ("peer", "calling_ae", "called_ae", "outcome", "operations",
                                   "failures", "bytes")} == {
        "peer": accepted["peer"], "calling_ae": "TRACKED", "called_ae": ACCEPTOR,
        "outcome": "released", "operations": {"C-ECHO": 2}, "failures": 0, "bytes": 200}
    assert closed["duration_ms"] >= 0
    # the record the handlers saw while the association was up
    (record, again) = acceptor.seen
    assert record is again and record is not None
    assert (record.calling_ae, record.called_ae, record.contexts, record.accepted) == (
        "TRACKED", ACCEPTOR, 1, True)
    assert acceptor.sample("pacs_associations_total", outcome="accepted") == 1
    assert acceptor.sample("pacs_associations_total", outcome="released") == 1
    assert acceptor.sample("pacs_association_active") == 0
    assert acceptor.sample("pacs_dimse_requests_total",
                           service="C-ECHO", status="0x0000") == 2


def test_the_active_gauge_counts_open_associations(
        start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    with Scu("FIRST").associate(acceptor.port, called=ACCEPTOR), \
            Scu("SECOND").associate(acceptor.port, called=ACCEPTOR):
        wait_until(lambda: acceptor.sample("pacs_association_active") == 2, 10,
                   "two active associations")
    wait_until(lambda: acceptor.sample("pacs_association_active") == 0, 10,
               "no active association")
    assert acceptor.sample("pacs_associations_total", outcome="released") == 2


def test_failures_are_the_statuses_that_are_neither_success_pending_nor_warning(
        start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    acceptor.statuses = [SUCCESS, 0xFF00, 0xFF01, 0xB000, 0xB007, 0xC000, 0xA700, 0x0111]
    with capture_logs() as logs:
        echo(acceptor.port, 8)
        closed = wait_for_event(logs, "association.closed")
    assert closed["operations"] == {"C-ECHO": 8}
    assert closed["failures"] == 3
    for status in ("0xB000", "0xC000", "0xA700", "0x0111"):
        assert acceptor.sample("pacs_dimse_requests_total",
                               service="C-ECHO", status=status) == 1


def test_an_aborted_association(start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    with capture_logs() as logs:
        echo(acceptor.port, 1, abort=True)
        closed = wait_for_event(logs, "association.closed")
    assert closed["operations"] == {"C-ECHO": 1}
    assert acceptor.sample("pacs_associations_total", outcome="released") is None
    assert acceptor.sample("pacs_association_active") == 0


# pynetdicom's AA-3 queues the A-ABORT indication, closes the socket and fires
# EVT_CONN_CLOSE from the DUL thread, while the reactor polls for the indication to fire
# EVT_ABORTED, which almost always comes second: the tracker reads the queued indication.
def test_an_aborted_association_is_logged_as_aborted(
        start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    with capture_logs() as logs:
        echo(acceptor.port, 1, abort=True)
        closed = wait_for_event(logs, "association.closed")
    assert closed["outcome"] == "aborted"
    assert acceptor.sample("pacs_associations_total", outcome="aborted") == 1


def test_a_rejected_association(start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor(allowed=["ONLY"])
    with capture_logs() as logs:
        with Scu("STRANGER").associate(acceptor.port, called=ACCEPTOR,
                                       require=False) as assoc:
            assert assoc.is_rejected
        rejected = wait_for_event(logs, "association.rejected")
        wait_until(lambda: acceptor.sample("pacs_associations_total", outcome="rejected") == 1,
                   10, "the rejection counted")
    assert rejected["calling_ae"] == "STRANGER" and rejected["called_ae"] == ACCEPTOR
    assert rejected["log_level"] == "warning"
    # never accepted: neither a closing line nor an active association
    assert events(logs, "association.closed") == [] and events(logs,
                                                                "association.accepted") == []
    assert acceptor.sample("pacs_associations_total", outcome="accepted") is None
    assert acceptor.sample("pacs_association_active") == 0


def test_a_rejected_association_names_its_peer(start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor(allowed=["ONLY"])
    with capture_logs() as logs:
        with Scu("STRANGER").associate(acceptor.port, called=ACCEPTOR, require=False):
            pass
        rejected = wait_for_event(logs, "association.rejected")
    assert rejected["peer"].startswith("127.0.0.1:")


def test_detail_lists_the_recent_operations(start_acceptor: Callable[..., Acceptor]) -> None:
    acceptor = start_acceptor()
    acceptor.statuses = [SUCCESS, 0xA700]
    acceptor.nbytes = 7
    before = datetime.now(UTC)
    with Scu("DETAILED").associate(acceptor.port, called=ACCEPTOR) as assoc:
        for _ in range(2):
            assert assoc.send_c_echo().Status == SUCCESS
        (live,) = acceptor.tracker.snapshot()
        detail = acceptor.tracker.detail(live["id"])
    assert detail is not None
    recent = detail["recent_operations"]
    assert [{k: r[k] for k in ("operation", "status", "bytes")} for r in recent] == [
        {"operation": "C-ECHO", "status": "0x0000", "bytes": 7},
        {"operation": "C-ECHO", "status": "0xA700", "bytes": 7}]
    for r in recent:
        assert before <= datetime.fromisoformat(r["at"]) <= datetime.now(UTC)
        assert r["at"].endswith("+00:00")
