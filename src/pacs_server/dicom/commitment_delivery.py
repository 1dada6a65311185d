"""Delivery of Storage Commitment reports (N-EVENT-REPORT, PS3.4 J.3.3).

Two ways, one owner per commitment at a time (an in-memory claim), so a report is never
in flight twice:

* **Same association.** After recording an N-ACTION, a worker thread checks the
  instances, gives the requester half a second to release (see `_RELEASE_GRACE_S`)
  and calls pynetdicom's `send_n_event_report` on the requesting association.
  That call first pauses the association's reactor, which can only happen once the
  N-ACTION handler returned and pynetdicom sent the N-ACTION-RSP, so the report always
  follows the response. If the requester released the association, answers anything
  but Success or does not answer, the commitment goes to the runner at once.
* **New association (the runner).** A task that starts with the server and wakes when
  the earliest pending commitment is due: it associates with the requester (its AE
  title looked up in `peers`), proposing the Storage Commitment Push Model with SCP/SCU
  Role Selection, SCP role for us and no SCU role (PS3.4 J.3.3, PS3.7 D.3.3.4), and
  sends the report. A failure is retried with exponential back-off
  (`commitment.retry_interval` .. `max_retry_interval`) until `give_up_after`.

A commitment is marked delivered only after an N-EVENT-REPORT-RSP with Success; the
index keeps pending ones across restarts, so a report can be sent again only if the
requester's response was lost (at-least-once delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_RELEASE

from pacs_server.config import PeerConfig, ServerConfig
from pacs_server.dicom.associations import set_nodelay
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.commitment import PUSH_MODEL, PUSH_MODEL_INSTANCE, SYNTAXES, report_dataset
from pacs_server.dicom.server import our_ae
from pacs_server.errors import PacsError, ReportNotDelivered
from pacs_server.metrics import Metrics
from pacs_server.periodic import Gate
from pacs_server.services.commitment import CommitmentReport, CommitmentRequest, CommitmentService

log = structlog.get_logger(__name__)

_IDLE_WAKE_S = 60.0        # re-read the index now and then even when nothing is due
_CLAIMED_RETRY_S = 1.0     # a due commitment owned by a same-association worker
# How long after the N-ACTION the requester may still release before the report is sent
# on its association. pynetdicom (like other toolkits) ignores P-DATA once it has sent
# A-RELEASE-RQ, and our paused reactor would answer that release only after the report's
# response, which never comes: the requester would wait out its ACSE timeout and abort.
# Most SCUs that do not wait for the report release within milliseconds of the RSP.
_RELEASE_GRACE_S = 0.5


class CommitmentDelivery:
    """The component that sends Storage Commitment reports; `start()`/`close()`.

    Args:
        commitments: the use cases (records, reports, back-off).
        bridge: the door from worker threads into the loop.
        server: our AE title and the timeouts of the associations we open.
        peer_of: the configured peer for an AE title (reloadable `peers`).
        metrics: counts the outcome of each delivery attempt.
    """

    name = "commitment-delivery"

    def __init__(self, commitments: CommitmentService, bridge: LoopBridge, server: ServerConfig,
                 peer_of: Callable[[str], PeerConfig | None], metrics: Metrics,
                 gate: Gate | None = None, owner: str = "") -> None:
        self._service = commitments
        # Reports sent over a new association go from one process of those sharing the
        # index: the holder of this lease (index/leases.py).
        self._gate = gate
        # This process's identity: the commitments it reports on their association are
        # held under it in the index, so no other node's runner sends them meanwhile.
        self._owner = owner
        self._outcomes = metrics.commitment_reports
        self._bridge = bridge
        self._server = server
        self._peer_of = peer_of
        self._claimed: set[int] = set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        # One report at a time per association: two threads pausing its reactor at once
        # would take each other's N-EVENT-REPORT-RSP.
        self._sending: weakref.WeakKeyDictionary[Association, threading.Lock] = (
            weakref.WeakKeyDictionary())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._owner:
            # What this process held when it last stopped (a crash mid-report).
            await self._service.release_holds(self._owner)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop the runner (a report being sent is finished first, within a bound) and
        wait briefly for same-association workers; what is left stays pending."""
        self._stopping = True
        self.wake()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self._server.acse_timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for worker in list(self._workers):
            await asyncio.to_thread(worker.join, 5.0)

    def wake(self) -> None:
        """Make the runner look at the index now (callable from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:   # the loop closed meanwhile
            pass

    # ------------------------------------------------------------------ N-ACTION
    async def accept(self, request: CommitmentRequest, assoc: Association) -> int:
        """Record the request (on the loop), then hand it to a worker on `assoc` or to
        the runner. The claim is taken here, on the loop right after the commit, so the
        runner never picks up a commitment the worker is about to send."""
        pk = await self._service.record(request)
        if not self._service.cfg.report_on_same_association:
            self.wake()
            return pk
        self._claim(pk)
        if self._owner:
            try:
                # The in-memory claim keeps this process's runner off it; the hold,
                # every other node's, for as long as the worker may take.
                await self._service.hold(pk, self._owner, self._server.acse_timeout
                                         + self._server.dimse_timeout + _RELEASE_GRACE_S)
            except Exception as exc:  # recorded all the same: a duplicate report at worst
                log.warning("commitment.hold_failed", commitment=pk, error=str(exc))
        worker = threading.Thread(target=self._report_on_association, args=(assoc, pk),
                                  name=f"commitment-{pk}", daemon=True)
        self._workers.add(worker)
        worker.start()
        return pk

    def _report_on_association(self, assoc: Association, pk: int) -> None:
        started = time.monotonic()
        sent = False
        try:
            report = self._bridge.run(self._service.report(pk))
            if report is None:
                return
            if not still_open(assoc, started + _RELEASE_GRACE_S):
                raise ReportNotDelivered("the requester closed the association")
            with self._lock:
                sending = self._sending.setdefault(assoc, threading.Lock())
            with sending:
                if not assoc.is_established:
                    raise ReportNotDelivered("the requester closed the association")
                send_report(assoc, report, self._server.ae_title)
            self._bridge.run(self._service.delivered(report, report.attempts + 1,
                                                     "same association"))
            self._outcomes.labels("same_association").inc()
            sent = True
        except PacsError as exc:
            log.info("commitment.same_association_failed", commitment=pk, error=str(exc))
        except Exception:
            log.exception("commitment.same_association_error", commitment=pk)
        finally:
            if self._owner and not sent:
                self._unhold(pk)
            self._release(pk)
            self._workers.discard(threading.current_thread())
            self.wake()

    # ------------------------------------------------------------------ runner
    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            self._wake.clear()
            delay = _IDLE_WAKE_S
            try:
                skipped = await self._deliver_due() if await self._holds_lease() else False
                nxt = await self._service.next_due()
                if nxt is not None:
                    delay = min(delay, max(0.0, (nxt - datetime.now(UTC)).total_seconds()))
                if skipped:
                    delay = max(delay, _CLAIMED_RETRY_S)
            except PacsError as exc:
                log.warning("commitment.runner_failed", error=str(exc))
                delay = self._service.cfg.retry_interval
            except Exception:
                log.exception("commitment.runner_error")
                delay = self._service.cfg.retry_interval
            if self._stopping:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _holds_lease(self) -> bool:
        if self._gate is None:
            return True
        return await self._gate(self.name, 2 * _IDLE_WAKE_S + 10.0)

    async def _deliver_due(self) -> bool:
        """Send every due report not owned by a worker; True if some were skipped."""
        skipped = False
        for row in await self._service.due():
            if self._stopping:
                break
            if not self._claim(row.pk):
                skipped = True
                continue
            try:
                await self._deliver_new(row.pk)
            finally:
                self._release(row.pk)
        return skipped

    async def _deliver_new(self, pk: int) -> None:
        report = await self._service.report(pk)
        if report is None:
            return
        attempts = report.attempts + 1
        peer = self._peer_of(report.calling_ae)
        if peer is None:
            error = f"requester {report.calling_ae!r} is not in peers"
        else:
            try:
                await asyncio.to_thread(self._send_new, report, peer)
            except ReportNotDelivered as exc:
                error = str(exc)
            else:
                await self._service.delivered(report, attempts, "new association")
                self._outcomes.labels("new_association").inc()
                return
        abandoned = await self._service.not_delivered(report, attempts, error)
        self._outcomes.labels("abandoned" if abandoned else "retry").inc()

    def _send_new(self, report: CommitmentReport, peer: PeerConfig) -> None:
        """Associate with the requester as Storage Commitment SCP and send the report."""
        s = self._server
        ae = our_ae(s)
        ae.add_requested_context(PUSH_MODEL, list(SYNTAXES))
        role = build_role(PUSH_MODEL, scu_role=False, scp_role=True)
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role],
                             evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)])
        if not assoc.is_established:
            how = ("rejected the association" if assoc.is_rejected else
                   "aborted the association" if assoc.is_aborted else "cannot be reached")
            raise ReportNotDelivered(f"{where} {how}")
        try:
            if not any(cx.abstract_syntax == PUSH_MODEL and cx.as_scp
                       for cx in assoc.accepted_contexts):
                # Some SCUs accept the context without answering the role proposal; the
                # report is still what they wait for.
                log.info("commitment.scp_role_not_confirmed", peer=where)
            send_report(assoc, report, s.ae_title)
        finally:
            if assoc.is_established:
                assoc.release()

    def _unhold(self, pk: int) -> None:
        """Hand a report the worker did not send to the runners at once."""
        try:
            self._bridge.run(self._service.unhold(pk))
        except Exception as exc:  # the hold then simply expires
            log.warning("commitment.unhold_failed", commitment=pk, error=str(exc))

    # ------------------------------------------------------------------ claims
    def _claim(self, pk: int) -> bool:
        with self._lock:
            if pk in self._claimed:
                return False
            self._claimed.add(pk)
            return True

    def _release(self, pk: int) -> None:
        with self._lock:
            self._claimed.discard(pk)


def still_open(assoc: Association, until: float) -> bool:
    """Whether `assoc` is still established at `until` (monotonic) with no A-RELEASE-RQ
    from the requester waiting to be answered."""
    while time.monotonic() < until:
        if not assoc.is_established:
            return False
        time.sleep(0.02)
    # Peek only: acse.is_release_requested() would take the A-RELEASE-RQ off the queue
    # that the association's reactor has to answer.
    pending = assoc.dul.peek_next_pdu()
    if isinstance(pending, A_RELEASE) and pending.result is None:
        return False
    return bool(assoc.is_established)


def send_report(assoc: Association, report: CommitmentReport, retrieve_ae: str) -> None:
    """Send the N-EVENT-REPORT; returns only on an N-EVENT-REPORT-RSP Success.

    Raises:
        ReportNotDelivered: no accepted context, no answer, or a non-Success status.
    """
    started = time.monotonic()
    try:
        status, _ = assoc.send_n_event_report(report_dataset(report, retrieve_ae),
                                              report.event_type, PUSH_MODEL,
                                              PUSH_MODEL_INSTANCE)
    except (RuntimeError, ValueError) as exc:
        raise ReportNotDelivered(f"N-EVENT-REPORT not sent: {exc}") from None
    code: Any = status.get("Status") if status is not None else None
    if code is None:
        raise ReportNotDelivered("no N-EVENT-REPORT-RSP (timeout or association lost)")
    if int(code) != 0:
        comment = status.get("ErrorComment", "")
        raise ReportNotDelivered(f"the requester answered 0x{int(code):04X} {comment}".strip())
    log.debug("commitment.report_sent", commitment=report.pk,
              seconds=round(time.monotonic() - started, 4))
