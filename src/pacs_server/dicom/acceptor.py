"""The acceptor's association on the event-driven transport, built once.

The fourth module of overrides of pynetdicom (with dicom/transport.py, dicom/reactor.py
and dicom/negotiation.py; pinned by tests/unit/test_transport_pins.py).

Upstream `Association.__init__` builds a `DULServiceProvider` and a
`DIMSEServiceProvider` by name, then binds its default handlers one `bind()` at a time;
the request handler then binds the server's handlers the same way. The event-driven
transport (dicom/reactor.py) then threw the DUL away for an `EventDUL`, replaced the
queues of both with waking ones, and dicom/transport.py replaced the send queue again
with a bounded one: per C-ECHO association ~0.3 ms of CPU (the request thread's
`EventPacsAssociation.__init__` was 0.55 of its 0.82 ms, half of it the second DUL;
`Condition.__init__`, four per queue, was the largest single function,
docs/performance.md "Results: the CPU of one association"). Here each piece is built
once, with its final class and queues, and the handler table is copied from one built
per listener.

Upstream change that would remove this module: `dul_class` / `dimse_class` attributes
on `Association` (and a handler table an association can start from).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import _config, evt
from pynetdicom._globals import MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom.acse import ACSE
from pynetdicom.association import ServiceUser
from pynetdicom.utils import make_target

from pacs_server.dicom.reactor import EventDUL, EventReactors, ResponseDIMSE, WakingQueue

Handlers = dict[Any, Any]


def handler_table(bound: dict[Any, list[tuple[Any, Any]]]) -> Handlers:
    """What `Association._bind_defaults()` and then binding `bound` (the server's
    handlers, as the request handler binds them) leave in `Association._handlers`."""
    table: Handlers = {}
    for event in evt._INTERVENTION_EVENTS:
        evt._add_handler(event, table, (evt.get_default_handler(event), None))
    for event, handlers in bound.items():
        if event.is_intervention and handlers:
            evt._add_handler(event, table, tuple(handlers))   # (handler, args)
        elif isinstance(event, evt.NotificationEvent):
            for handler in handlers:
                evt._add_handler(event, table, (handler[0], handler[1]))
    return table


def copy_handlers(table: Handlers) -> Handlers:
    """An association's own handler table (its notification lists are its own, so a
    later `bind()` or `unbind()` changes only this association)."""
    return {event: list(h) if isinstance(h, list) else h for event, h in table.items()}


def init_event_association(assoc: EventReactors, ae: Any, handlers: Handlers,
                           send_queue: Callable[..., WakingQueue],
                           state_machine: type) -> None:
    """Upstream `Association.__init__(ae, "acceptor")`, with the event-driven DUL,
    DIMSE provider and queues built directly, and the bound handlers copied.

    Sets every attribute upstream's sets (the pin tests/unit/test_transport_pins.py
    holds on `Association.__init__` says when that changes), then what
    `EventReactors.install_event_reactors()` adds. `send_queue(dul, on_put)` builds the
    DUL's send queue (transport.BoundedSendQueue), `state_machine(dul)` its state
    machine (transport.GuardedStateMachine).
    """
    assoc._ae = ae
    assoc.mode = MODE_ACCEPTOR
    assoc._server = None
    assoc.requestor = ServiceUser(assoc, MODE_REQUESTOR)
    assoc.acceptor = ServiceUser(assoc, MODE_ACCEPTOR)
    assoc.is_established = False
    assoc.is_rejected = False
    assoc.is_aborted = False
    assoc.is_released = False
    assoc._sent_abort = False
    assoc._sent_release = False
    assoc._accepted_cx = {}
    assoc._rejected_cx = []
    # install_event_reactors' pieces, needed by the DUL and the DIMSE queue below.
    assoc._wake = threading.Event()
    assoc._pause = threading.Condition()
    assoc.acse = ACSE(assoc)
    dul = EventDUL(assoc, assoc._wake.set, send_queue, state_machine)
    assoc.dul = dul
    dimse = ResponseDIMSE(assoc)
    dimse.msg_queue = WakingQueue(assoc._wake.set)
    assoc.dimse = dimse
    # Upstream's timeout setters (acse_timeout also sets the ARTIM timer's).
    assoc.acse_timeout = ae.acse_timeout
    assoc.connection_timeout = ae.connection_timeout
    assoc.dimse_timeout = ae.dimse_timeout
    assoc.network_timeout = ae.network_timeout
    assoc.network_timeout_response = "A-ABORT"
    assoc._handlers = copy_handlers(handlers)
    assoc._kill = False
    assoc._started_dul = False
    assoc._dul_ready = threading.Event()
    assoc._reactor_checkpoint = threading.Event()
    assoc._reactor_checkpoint.set()
    assoc._is_paused = False
    assoc._timer_resolution = _config.WINDOWS_TIMER_RESOLUTION
    threading.Thread.__init__(assoc, target=make_target(assoc.run_reactor))
    assoc.daemon = True
