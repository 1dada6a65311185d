"""Helpers for the Storage Commitment tests (integration and e2e): the requester side.

* `request_commitment`  one N-ACTION (Request Storage Commitment) from REQUESTER, with an
                        EVT_N_EVENT_REPORT handler on the association if asked;
* `RequesterScp`        the requester's own listener for N-EVENT-REPORTs over a new
                        association (accepts the SCP role the server proposes);
* `Reports`             what either of them received;
* `peers`               the `peers` override naming the requester;
* `stored`              C-STORE copies of pydicom's CT_small / MR_small, as references.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel

from support.config import SERVER_AE, peer
from support.instances import bundled_dataset
from support.polling import wait_until
from support.scp import start_listener
from support.scu import Scu, nodelay

REQUESTER = "MODALITY"
PUSH_MODEL = str(StorageCommitmentPushModel)
PUSH_INSTANCE = "1.2.840.10008.1.20.1.1"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
FAST_RETRY = {"commitment.retry_interval": 0.2, "commitment.max_retry_interval": 0.5}


# --------------------------------------------------------------------------- requester

@dataclass
class Reports:
    """N-EVENT-REPORTs a requester received: (how, event type, event information)."""

    got: list[tuple[str, int, Dataset]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, how: str) -> Callable[[Any], tuple[int, None]]:
        def on_report(event: Any) -> tuple[int, None]:
            info = event.event_information
            with self.lock:
                self.got.append((how, int(event.event_type), info))
            self.arrived.set()
            return 0x0000, None
        return on_report

    def wait(self, timeout: float = 20.0) -> tuple[str, int, Dataset]:
        assert self.arrived.wait(timeout), "no N-EVENT-REPORT arrived"
        with self.lock:
            return self.got[0]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[str, int, Dataset]]:
        def arrived() -> bool:
            with self.lock:
                return len(self.got) >= count

        try:
            wait_until(arrived, timeout, f"{count} N-EVENT-REPORTs")
        except TimeoutError:
            raise AssertionError(f"{len(self.got)} of {count} N-EVENT-REPORTs arrived") from None
        with self.lock:
            return list(self.got)


def requester_association(port: int, reports: Reports | None = None) -> Association:
    """An established association from REQUESTER proposing the Push Model; with
    `reports`, N-EVENT-REPORTs on it are recorded as "same".

    Not `Scu.associate`: its requestor never lets the reactor thread read the DIMSE
    queue, and here the reactor must read the N-EVENT-REPORT requests the server sends.
    """
    ae = Scu(REQUESTER).ae([(PUSH_MODEL, SYNTAXES)])
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, nodelay)]
    if reports:
        handlers.append((evt.EVT_N_EVENT_REPORT, reports.handler("same")))
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE, evt_handlers=handlers)
    assert assoc.is_established
    return assoc


def action_information(refs: Iterable[tuple[str, str]],
                       transaction_uid: str | None = None) -> Dataset:
    """Request Storage Commitment's Action Information (PS3.4 Table J.3-1)."""
    info = Dataset()
    info.TransactionUID = transaction_uid or generate_uid()
    info.ReferencedSOPSequence = [ref(cls, inst) for cls, inst in refs]
    return info


def request_commitment(port: int, refs: Iterable[tuple[str, str]], *,
                       transaction_uid: str | None = None, reports: Reports | None = None,
                       action_type: int = 1, instance: str = PUSH_INSTANCE,
                       info: Dataset | None = None, wait_for_report: bool = False) -> Dataset:
    """Send one N-ACTION from REQUESTER; returns the N-ACTION-RSP status dataset.

    With `reports`, an EVT_N_EVENT_REPORT handler is bound on the association and, with
    `wait_for_report`, the association stays open until the report arrived; otherwise
    it is released right after the N-ACTION-RSP.
    """
    if info is None:
        info = action_information(refs, transaction_uid)
    assoc = requester_association(port, reports)
    try:
        status, _ = assoc.send_n_action(info, action_type, PUSH_MODEL, instance)
        if wait_for_report and reports is not None and status.get("Status") == 0:
            reports.wait()
        return status
    finally:
        assoc.release()


def ref(cls: str, inst: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = cls
    item.ReferencedSOPInstanceUID = inst
    return item


class RequesterScp:
    """The requester's own Storage Commitment SCU listening for N-EVENT-REPORTs: accepts
    the SCP role the server proposes (PS3.7 D.3.3.4) and records each report."""

    def __init__(self, port: int = 0) -> None:
        self.reports = Reports()
        self.associations = 0
        ae = AE(ae_title=REQUESTER)
        ae.add_supported_context(PUSH_MODEL, SYNTAXES, scu_role=False, scp_role=True)
        self.server = start_listener(
            ae, ("127.0.0.1", port),
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.reports.handler("new")),
                          (evt.EVT_ACCEPTED, self._accepted)])
        self.port = int(self.server.server_address[1])
        self.roles: list[tuple[bool, bool]] = []

    def _accepted(self, event: Any) -> None:
        self.associations += 1
        for cx in event.assoc.accepted_contexts:
            if cx.abstract_syntax == PUSH_MODEL:
                self.roles.append((bool(cx.as_scu), bool(cx.as_scp)))

    def stop(self) -> None:
        self.server.shutdown()


def peers(port: int) -> dict[str, Any]:
    """The `peers` override naming the requester's listener on `port`."""
    return {"peers": [peer(REQUESTER, port)]}


def stored(port: int, count: int = 2) -> list[tuple[str, str]]:
    """Store CT_small / MR_small copies with fresh UIDs; (class, instance) of each."""
    names = ["CT_small.dcm", "MR_small.dcm"]
    datasets = [bundled_dataset(names[i % 2]) for i in range(count)]
    assert [r.status for r in Scu().store_datasets(port, datasets)] == [0] * count
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
