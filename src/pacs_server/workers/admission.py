"""Server-wide admission with worker processes: one AssociationPolicy, in the supervisor.

Every limit of dicom/policy.py (max_associations, per-AE and per-address concurrency,
rate limits, unassociated connections) and every access decision (allowed calling AEs
from the file and the admin API, pause) is taken by the supervisor's one policy, so
the limits mean what they say across workers. A worker's `RemotePolicy` has the
policy's interface and asks the supervisor's `AdmissionDesk` over the control channel
(workers/channel.py): one round trip per connection admitted and per association
decided; giving a slot back is sent without waiting (measured in docs/performance.md).

The desk remembers what each worker connection holds; when a worker dies its slots
are given back (`closed`), so a SIGKILLed worker leaks no association slot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from pacs_server.config import AccessControlConfig, LimitsConfig
from pacs_server.dicom.policy import TRANSIENT_LOCAL_LIMIT, AccessEntry, AssociationPolicy, Refusal
from pacs_server.workers.channel import Channel, ChannelError

log = structlog.get_logger(__name__)

UNAVAILABLE = Refusal("admission_unavailable", TRANSIENT_LOCAL_LIMIT, False)


class AdmissionDesk:
    """The supervisor's side: answers the workers' policy calls with the one policy."""

    def __init__(self, policy: AssociationPolicy,
                 on_hello: Callable[[int, int, list[str]], None],
                 on_events: Callable[[int, list[Any]], None] = lambda _w, _e: None,
                 watching: Callable[[], tuple[int, bool]] = lambda: (0, False)) -> None:
        self.policy = policy
        self._on_hello = on_hello
        self._on_events = on_events
        self._watching = watching

    def handle(self, req: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
        pending: Counter[str] = session.setdefault("pending", Counter())
        active: Counter[tuple[str, str]] = session.setdefault("active", Counter())
        op = req.get("op")
        if op == "admit":
            address = str(req["address"])
            ok = self.policy.admit_connection(address)
            if ok:
                pending[address] += 1
            return {"ok": ok}
        if op == "done":
            address = str(req["address"])
            if pending[address] > 0:     # a slot of an earlier connection was given back
                pending[address] -= 1
                self.policy.connection_done(address)
            return {}
        if op == "decide":
            calling, address = str(req["calling_ae"]), str(req["address"])
            refusal = self.policy.decide(calling, address, bool(req.get("tls")),
                                         str(req.get("tls_subject", "")))
            if refusal is None:
                active[(calling.strip(), address)] += 1
                return {"refusal": None}
            return {"refusal": [refusal.reason, list(refusal.rjt), refusal.security]}
        if op == "release":
            key = (str(req["calling_ae"]).strip(), str(req["address"]))
            if active[key] > 0:
                active[key] -= 1
                self.policy.release(*key)
            return {}
        if op == "events":       # a worker's association events, for the live feed
            self._on_events(int(req["worker"]), list(req["events"]))
            return {}
        if op == "hello":
            session["worker"] = int(req["worker"])
            self._on_hello(int(req["worker"]), int(req["pid"]),
                           [str(name) for name in req.get("services", [])])
            generation, on = self._watching()
            return {"watching": [generation, on]}
        return {"error": f"unknown operation {op!r}"}

    def closed(self, session: dict[str, Any]) -> None:
        """A worker's connection ended (it exited or was killed): free what it held."""
        held = 0
        for address, n in session.get("pending", {}).items():
            for _ in range(n):
                self.policy.connection_done(address)
            held += n
        for (calling, address), n in session.get("active", {}).items():
            for _ in range(n):
                self.policy.release(calling, address)
            held += n
        if held:
            log.info("worker.slots_released", worker=session.get("worker"), slots=held)


class RemotePolicy:
    """A worker's AssociationPolicy: the same calls, answered by the supervisor's desk.

    If the supervisor does not answer, new connections are closed and associations
    refused as transient (the modality retries); a live association is unaffected.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def _call(self, **request: Any) -> dict[str, Any] | None:
        try:
            return self._channel.call(request)
        except ChannelError as exc:
            log.error("admission.unavailable", error=str(exc), op=request.get("op"))
            return None

    def _tell(self, **request: Any) -> None:
        """A slot given back: no answer awaited (a lost one is freed with the channel)."""
        try:
            self._channel.tell(request)
        except ChannelError as exc:
            log.error("admission.unavailable", error=str(exc), op=request.get("op"))

    def hello(self, worker: int, pid: int, services: list[str]) -> tuple[int, bool]:
        """This worker listens; `services` names the DICOM services it serves. Returns
        whether the live feed is watched (generation, on: workers/fleet.py)."""
        reply = self._call(op="hello", worker=worker, pid=pid, services=services) or {}
        generation, on = reply.get("watching") or (0, False)
        return int(generation), bool(on)

    def admit_connection(self, address: str) -> bool:
        reply = self._call(op="admit", address=address)
        return bool(reply and reply.get("ok"))

    def connection_done(self, address: str) -> None:
        self._tell(op="done", address=address)

    def decide(self, calling_ae: str, address: str, tls: bool,
               tls_subject: str = "") -> Refusal | None:
        reply = self._call(op="decide", calling_ae=calling_ae, address=address, tls=tls,
                           tls_subject=tls_subject)
        if reply is None or "refusal" not in reply:
            return UNAVAILABLE
        if reply["refusal"] is None:
            return None
        reason, rjt, security = reply["refusal"]
        return Refusal(reason, (rjt[0], rjt[1], rjt[2]), security)

    def release(self, calling_ae: str, address: str) -> None:
        self._tell(op="release", calling_ae=calling_ae, address=address)

    # The supervisor's policy holds these; a worker's control and listener call them.
    paused = False

    def reconfigure(self, access: AccessControlConfig, limits: LimitsConfig) -> None:
        pass

    def set_api_entries(self, entries: Iterable[AccessEntry]) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass
