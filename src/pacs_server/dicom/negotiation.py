"""Association set-up on the event-driven transport: the negotiation of a proposal
kept for the next association proposing the same bytes, and the A-ASSOCIATE-AC encoded
once.

The third module of overrides of pynetdicom (with dicom/transport.py and
dicom/reactor.py; pinned by tests/unit/test_transport_pins.py).

Upstream negotiates every A-ASSOCIATE-RQ from scratch: each proposed context against
each supported one (`presentation.negotiate_as_acceptor`), then builds the
A-ASSOCIATE-AC primitive, its PDU and its bytes (fsm AE-7). For a storescu-like
proposal (121 contexts) against our 163 that is 4.2 ms to negotiate and 3.5 ms to build
and encode the AC (CPU, docs/performance.md), on every association, although a modality
sends the same bytes each time. The result depends on nothing but those bytes and the
listener's supported contexts, AE title, PDU size and implementation identity: PS3.8
9.3.3 puts nothing in the A-ASSOCIATE-AC that the A-ASSOCIATE-RQ does not determine (the
titles are echoed, the contexts and user information answer the proposal). So the
outcome of one proposal
(accepted and rejected contexts, the common extended negotiation, the AC primitive and
its bytes) is kept per listener, keyed by the RQ's bytes, and replayed for the next
association proposing them. The policy (dicom/policy.py: AE titles, hosts, TLS, limits)
decides before, on every association; the cache is emptied on SIGHUP
(`DicomServer.reconfigure`). A proposal carrying User Identity is never kept: its
answer is the identity check's, not the proposal's.

Upstream change that would remove this module: a cheaper negotiation (supported
contexts indexed by abstract syntax) and a faster A-ASSOCIATE-AC encoder.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE, LOGGER
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

# Distinct proposals kept per listener (the same bound as the decoded RQs').
NEGOTIATION_CACHE = 32


class EncodedAccept(A_ASSOCIATE):
    """An A-ASSOCIATE (accept) primitive that carries its A-ASSOCIATE-AC, encoded."""

    pdu: A_ASSOCIATE_AC
    encoded: bytes


def encode_accept(primitive: A_ASSOCIATE) -> EncodedAccept:
    """`primitive` (an accept) with its PDU built and encoded, as fsm AE-7 would."""
    pdu = A_ASSOCIATE_AC(primitive)
    primitive.__class__ = EncodedAccept
    accept = cast(EncodedAccept, primitive)
    accept.pdu = pdu
    accept.encoded = bytes(pdu.encode())
    return accept


def send_encoded_accept(dul: Any) -> str:
    """fsm AE-7 (Sta3 + Evt7) for an `EncodedAccept`: send its bytes; the next state.

    Upstream AE-7 builds `A_ASSOCIATE_AC(primitive)` and encodes it for every
    association; here both were done once for the proposal.
    """
    primitive = cast(EncodedAccept, dul.to_provider_queue.get(False))
    if dul.socket is not None:
        dul.socket.send(primitive.encoded)
        evt.trigger(dul.assoc, evt.EVT_PDU_SENT, {"pdu": primitive.pdu})
    return "Sta6"


def is_encoded_accept_due(dul: Any, event: str) -> bool:
    """Whether `event` makes the DUL send an `EncodedAccept` (AE-7)."""
    if event != "Evt7" or dul.state_machine.current_state != "Sta3":
        return False
    try:
        return isinstance(dul.to_provider_queue.queue[0], EncodedAccept)
    except IndexError:
        return False


@dataclass(frozen=True)
class Negotiated:
    """What the negotiation of one proposal left on the association, to replay."""

    accepted: dict[int, PresentationContext]
    rejected: list[PresentationContext]
    common_ext: dict[Any, Any]
    accept: EncodedAccept


V = TypeVar("V")


class ByProposal(Generic[V]):
    """What is kept per A-ASSOCIATE-RQ's bytes, least recently used dropped first;
    thread-safe (the decoded RQs, dicom/reactor.py, and the negotiations)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, V] = OrderedDict()

    def get(self, key: bytes) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: V) -> None:
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every proposal (the configuration was reloaded)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class NegotiationCache(ByProposal[Negotiated]):
    """The negotiated proposals of one listener."""

    def __init__(self, size: int = NEGOTIATION_CACHE) -> None:
        super().__init__(size)


def proposal_key(acse: ACSE) -> bytes | None:
    """The bytes of the A-ASSOCIATE-RQ being negotiated, when its outcome may be kept
    (decoded by the event-driven DUL, dicom/reactor.py, and without User Identity)."""
    key = getattr(acse.requestor.primitive, "proposal", None)
    if key is None or acse.requestor.user_identity is not None:
        return None
    return cast(bytes, key)


def capture(acse: ACSE) -> Negotiated | None:
    """The outcome of the negotiation that just accepted, or None (not accepted, or the
    A-ASSOCIATE-AC was not encoded ahead)."""
    assoc = acse.assoc
    accept = acse.acceptor.primitive
    if not assoc.is_established or not isinstance(accept, EncodedAccept):
        return None
    return Negotiated(dict(assoc._accepted_cx), list(assoc._rejected_cx),
                      dict(acse.acceptor._common_ext), accept)


def replay(acse: ACSE, outcome: Negotiated) -> None:
    """Accept as upstream's `_negotiate_as_acceptor` did for the same proposal.

    The contexts are shared (read-only after negotiation); the association gets its
    own primitive and lists, like the decoded RQ's (dicom/reactor.py).
    """
    assoc = acse.assoc
    assoc._accepted_cx = dict(outcome.accepted)
    assoc._rejected_cx = list(outcome.rejected)
    acse.acceptor._common_ext = dict(outcome.common_ext)
    accept = copy.copy(outcome.accept)
    accept._user_information = list(outcome.accept.user_information)
    acse.acceptor.primitive = accept
    LOGGER.info("Accepting Association")
    acse.dul.send_pdu(accept)
    evt.trigger(assoc, evt.EVT_ACCEPTED, {})
    assoc.is_established = True
    evt.trigger(assoc, evt.EVT_ESTABLISHED, {})
