"""Query/Retrieve C-MOVE SCP (PS3.4 C.4.2): sub-operations over a new association to a
configured peer. Unknown destinations get 0xA801 at once; an unreachable one 0xA801
after the connection attempt (bounded by the AE's connection timeout)."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from pacs_server.config import PeerConfig
from pacs_server.dicom.associations import set_nodelay
from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.identifiers import QR_MOVE
from pacs_server.dicom.service import DicomService, Operation, contexts_for
from pacs_server.dicom.status import Service
from pacs_server.dicom.suboperations import resolve, suboperations
from pacs_server.errors import PacsError, UnknownDestination
from pacs_server.metrics import Metrics
from pacs_server.services.retrieve import RetrieveService, StoredRef
from pacs_server.services.transcode import FALLBACKS

log = structlog.get_logger(__name__)

MAX_CONTEXTS = 128


def handle_move(event: Event, retrieve: RetrieveService, bridge: LoopBridge,
                peer_of: Callable[[str], PeerConfig | None], max_pdu: int,
                metrics: Metrics, transcode: bool = True,
                tls: Callable[[], ssl.SSLContext | None] = lambda: None) -> Iterator[Any]:
    """Yields the destination, the sub-operation count, then (0xFF00, dataset) each.

    An unknown destination is raised before anything is yielded (the wrapper makes
    pynetdicom answer 0xA801); an invalid identifier after the destination (0xA900).
    """
    dest = str(event.move_destination or "").strip()
    peer = peer_of(dest)
    if peer is None:
        raise UnknownDestination(f"move destination {dest!r} is not a configured peer")
    transport = _transport(peer, tls)
    try:
        req, refs = resolve(event, retrieve, bridge)
    except PacsError:
        # pynetdicom needs a destination and a count before it accepts a final status,
        # and it associates with the destination in between: propose Verification, or
        # pynetdicom refuses to associate without contexts and answers 0xC515 instead.
        yield peer.host, peer.port, {"contexts": [build_context(Verification)],
                                     "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)],
                                     **transport}
        raise
    log.info("c_move.started", destination=dest, qr_level=req.level, instances=len(refs),
             tls=peer.tls)
    yield peer.host, peer.port, {
        "contexts": proposed_contexts(refs, transcode),
        "evt_handlers": [(evt.EVT_CONN_OPEN, set_nodelay)],
        "max_pdu": max_pdu,
        **transport,
    }
    yield len(refs)
    yield from suboperations(event, "C-MOVE", refs, retrieve, metrics, transcode)


def _transport(peer: PeerConfig,
               tls: Callable[[], ssl.SSLContext | None]) -> dict[str, Any]:
    """`tls_args` for ae.associate when the peer is marked `tls: true` (PS3.15 B.9): the
    client context of the moment (SIGHUP may have replaced it), verified against the
    peer's host name or address."""
    if not peer.tls:
        return {}
    ctx = tls()
    if ctx is None:
        raise UnknownDestination(f"move destination {peer.ae_title!r} needs TLS, and TLS "
                                 "is not enabled on this server")
    return {"tls_args": (ctx, peer.host)}


def service(retrieve: RetrieveService, bridge: LoopBridge,
            peer_of: Callable[[str], PeerConfig | None], max_pdu: int,
            metrics: Metrics, transcode: Callable[[], bool] = lambda: True,
            tls: Callable[[], ssl.SSLContext | None] = lambda: None) -> DicomService:
    """C-MOVE on the Patient Root and Study Root MOVE models, to configured peers
    (over TLS to those marked `tls: true`, with the context `tls()` returns).

    `transcode` reads the current (reloadable) `retrieve.transcode`.
    """
    def handle(event: Event) -> Iterator[Any]:
        return handle_move(event, retrieve, bridge, peer_of, max_pdu, metrics, transcode(),
                           tls)
    return DicomService(
        name="Query/Retrieve MOVE",
        contexts=contexts_for(QR_MOVE),
        operations=(Operation(evt.EVT_C_MOVE, handle, Service.C_MOVE, "C-MOVE",
                              frozenset(str(uid) for uid in QR_MOVE)),),
    )


def proposed_contexts(refs: list[StoredRef], transcode: bool = True) -> list[PresentationContext]:
    """The contexts the destination is offered: built from what the retrieve holds.

    One context per (SOP class, stored syntax) carrying that syntax alone, so that a
    destination accepting it receives the file as stored; with transcoding on, one more
    per SOP class offering Explicit and Implicit VR Little Endian, the fallbacks any
    Storage SCP takes (PS3.5 10.1) and services/transcode.py can produce from anything
    it can decode. Whatever the destination accepts is what is sent.
    """
    stored: dict[tuple[str, str], None] = {}
    for ref in refs:
        stored[(ref.sop_class_uid, ref.transfer_syntax_uid)] = None
    wanted: list[tuple[str, list[str]]] = [(sop, [ts]) for sop, ts in stored]
    if transcode:
        for sop in dict.fromkeys(sop for sop, _ in stored):
            fallbacks = [str(ts) for ts in FALLBACKS if (sop, str(ts)) not in stored]
            if fallbacks:
                wanted.append((sop, fallbacks))
    if len(wanted) > MAX_CONTEXTS:
        # More than one association may propose (PS3.8 9.3.2.2: odd IDs 1-255): one
        # context per SOP class offering every syntax held for it, fallbacks last.
        merged: dict[str, list[str]] = {}
        for sop, syntaxes in wanted:
            merged.setdefault(sop, [])
            merged[sop].extend(t for t in syntaxes if t not in merged[sop])
        wanted = list(merged.items())[:MAX_CONTEXTS]
    return [build_context(sop, syntaxes) for sop, syntaxes in wanted]
