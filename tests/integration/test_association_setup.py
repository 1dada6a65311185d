"""Association set-up on the event-driven transport: a proposal is negotiated once and
answered the same way every time (byte for byte what pynetdicom's own negotiation
answers, on the stock transport), while the policy still decides every association
(dicom/negotiation.py, EventDUL.read_request)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
)
from pynetdicom.presentation import StoragePresentationContexts, build_context

from pacs_server.config import Config, load_config
from pacs_server.dicom import echo, runtime
from pacs_server.dicom.server import DicomServer
from pacs_server.metrics import Metrics
from support.config import SERVER_AE
from support.polling import wait_until
from support.scu import Scu
from support.security import association_threads, echo_rq_pdata, read_pdu

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
NOT_SUPPORTED = "1.2.826.0.1.3680043.9.9999.1"      # a private SOP class nobody serves
NATIVE = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2"]
RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


def storescu_rq(calling: str = "SETUP") -> bytes:
    """Contexts as dcmtk's storescu proposes them (Verification, and pynetdicom's storage
    classes with three uncompressed syntaxes each), one more for a class we do not
    serve, Study Root C-FIND with SOP Class Extended Negotiation, and an SCP/SCU role
    selection item."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = SERVER_AE
    classes = [cx.abstract_syntax for cx in StoragePresentationContexts]
    contexts = [build_context(VERIFICATION)]
    contexts += [build_context(uid, NATIVE) for uid in [*classes, STUDY_FIND, NOT_SUPPORTED]]
    for number, cx in enumerate(contexts):
        cx.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = contexts
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = 16384
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT_IMAGE
    role.scu_role = True
    role.scp_role = False
    extended = SOPClassExtendedNegotiation()     # relational queries, combined date-time
    extended.sop_class_uid = STUDY_FIND
    extended.service_class_application_information = b"\x01\x01"
    primitive.user_information = [max_len, role, extended]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def exchange(port: int | None, rq: bytes) -> bytes:
    """Send `rq` on a new connection; return the answer. When it is an A-ASSOCIATE-AC,
    a C-ECHO on context 1 must succeed and the association is released."""
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(rq)
        answer = read_pdu(sock, 10)
        if answer[:1] == b"\x02":
            sock.sendall(echo_rq_pdata())
            rsp = read_pdu(sock, 10)
            assert rsp[:1] == b"\x04" and rsp[-2:] == b"\x00\x00", rsp.hex()  # Status 0
            sock.sendall(RELEASE_RQ)
            assert read_pdu(sock, 10)[:1] == b"\x06"
        return answer


def results(ac: bytes) -> dict[int, int]:
    """{context ID: result} of an A-ASSOCIATE-AC."""
    pdu = A_ASSOCIATE_AC()
    pdu.decode(ac)
    return {cx.context_id: cx.result
            for cx in pdu.to_primitive().presentation_context_definition_results_list}


def rejection(answer: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    assert answer[:1] == b"\x03", answer[:10].hex()
    return answer[7], answer[8], answer[9]


async def test_a_kept_proposal_is_answered_as_upstream_answers_it(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config],
        tmp_path: Path) -> None:
    stock = await start_server(make_cfg({"server.transport": "stock"}, root=tmp_path / "s"))
    events = await start_server(make_cfg({"server.transport": "events"},
                                         root=tmp_path / "e"))
    rq = storescu_rq()
    upstream = await asyncio.to_thread(exchange, stock.port, rq)
    assert upstream[:1] == b"\x02"
    answers = [await asyncio.to_thread(exchange, events.port, rq) for _ in range(3)]
    assert answers == [upstream] * 3
    outcome = results(upstream)
    assert len(outcome) == len(StoragePresentationContexts) + 3
    assert outcome[1] == 0x00                  # Verification
    assert outcome[max(outcome)] == 0x03       # NOT_SUPPORTED: abstract syntax not supported
    pdu = A_ASSOCIATE_AC()
    pdu.decode(upstream)
    replies = [item for item in pdu.to_primitive().user_information
               if isinstance(item, SOPClassExtendedNegotiation)]
    assert [str(item.sop_class_uid) for item in replies] == [STUDY_FIND]


async def test_the_policy_decides_every_association_of_a_kept_proposal(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    allowed = ["SETUP", "OTHER"]

    def current() -> Config:
        return make_cfg({"access_control.allowed_ae_titles": allowed,
                         "limits.associations_per_minute_per_ae": 3})

    app = await start_server(current(), reload_config=current)
    rq = storescu_rq("SETUP")
    for _ in range(3):
        assert (await asyncio.to_thread(exchange, app.port, rq))[:1] == b"\x02"
    # The same bytes, over the rate: rejected-transient, service-provider, local limit.
    assert rejection(await asyncio.to_thread(exchange, app.port, rq)) == (2, 3, 2)
    allowed = ["OTHER"]
    assert app.reload() is True
    # Not allowed any more: rejected-permanent, service-user, calling AE not recognised.
    assert rejection(await asyncio.to_thread(exchange, app.port, rq)) == (1, 1, 3)
    other = storescu_rq("OTHER")
    assert (await asyncio.to_thread(exchange, app.port, other))[:1] == b"\x02"
    await asyncio.to_thread(wait_until, lambda: association_threads() == 0, 10.0,
                            "no association thread left")


@pytest.mark.parametrize("transport", ["events", "stock"])
async def test_stop_during_set_up_aborts_the_connection(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config],
        transport: str) -> None:
    """A connection that has not sent its A-ASSOCIATE-RQ when the server stops gets an
    A-ABORT (or the connection closed) and the stop does not wait for it."""
    app = await start_server(make_cfg({"server.transport": transport,
                                       "server.shutdown_grace": 0.5,
                                       "server.negotiation_timeout": 30}))
    assert app.port is not None
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        await asyncio.to_thread(wait_until, lambda: association_threads() > 0, 5.0,
                                "the connection's association thread")
        started = time.monotonic()
        await asyncio.to_thread(app.stop)
        assert time.monotonic() - started < 10
        answer = await asyncio.to_thread(read_pdu, sock, 10)
        assert answer[:1] in (b"", b"\x07"), answer[:10].hex()
    await asyncio.to_thread(wait_until, lambda: association_threads() == 0, 10.0,
                            "no association thread left")


def test_a_handler_bound_on_the_running_server_reaches_later_associations(
        tmp_path: Path) -> None:
    """Associations start from a handler table built at the first one
    (dicom/acceptor.py): a handler bound or unbound on the server afterwards, through
    pynetdicom's own `bind()` / `unbind()`, must reach the next association."""
    runtime.configure_libraries()
    cfg = load_config(None, {"server.port": 0, "server.host": "127.0.0.1",
                             "logging.file": "", "monitoring.metrics_port": -1})
    server = DicomServer(cfg.server, cfg.access_control, [echo.service()],
                         Metrics(CollectorRegistry()), str(tmp_path))
    server.start()
    try:
        assert server.port is not None
        scu = Scu()
        assert scu.echo(server.port) == 0          # the handler table is in use from here
        seen: list[int] = []

        def bound(event: Any) -> int:
            seen.append(event.assoc.native_id or 0)
            return 0x0000

        (listener,) = server.servers()
        listener.bind(evt.EVT_C_ECHO, bound)
        assert scu.echo(server.port) == 0
        assert len(seen) == 1
        listener.unbind(evt.EVT_C_ECHO, bound)
        assert scu.echo(server.port) == 0
        assert len(seen) == 1
    finally:
        server.stop_accepting()
        server.drain(1.0)
