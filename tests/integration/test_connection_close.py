"""The end of a connection (PS3.8 9.2, Sta13): after an A-ASSOCIATE-RJ or an
A-RELEASE-RP the server waits for the peer to close, bounded by ARTIM, and its own close
never resets a peer that has not read the last PDU."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pacs_server.config import Config
from pacs_server.dicom.closing import STA13_ARTIM_S
from support.http import TOKEN, base_url, http_call, http_get
from support.polling import wait_until
from support.scu import Scu
from support.security import (
    associate_rq,
    associated,
    association_threads,
    connect_from,
    echo_rq_pdata,
    read_pdu,
    wait_threads,
)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): type 03, length 4, reserved, result 1 (permanent),
# source 1 (service user), reason 3 (calling AE title not recognised).
RJ_CALLING_AE = bytes.fromhex("0300000000040001" "0103")
RELEASE_RQ = bytes.fromhex("0500000000040000" "0000")


def whitelist(make_cfg: Callable[..., Config], **more: Any) -> Config:
    return make_cfg({"access_control.allowed_ae_titles": ["GOODSCU"],
                     "server.negotiation_timeout": 30.0, **more})


def still_open(sock: socket.socket, seconds: float) -> bool:
    """Nothing readable (no EOF, no reset) on `sock` for `seconds`."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


@contextmanager
def refused_connection(port: int) -> Iterator[socket.socket]:
    """A raw connection that has sent an A-ASSOCIATE-RQ the whitelist refuses."""
    sock = connect_from("127.0.0.1", port, timeout=10.0)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq(calling="BADSCU"))
        yield sock
    finally:
        sock.close()


def refused_then_sending(port: int) -> tuple[bytes, bool]:
    """A refused RQ followed, before anything is read, by P-DATA for half a second:
    the PDU then read, and whether the connection was still open after it."""
    with refused_connection(port) as sock:
        for _ in range(10):
            time.sleep(0.05)
            sock.sendall(echo_rq_pdata())
        reply = read_pdu(sock)
        return reply, still_open(sock, 0.3)


async def test_a_peer_sending_after_its_refused_request_reads_the_whole_rj(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(whitelist(make_cfg))
    before = app.sample("pacs_associations_total", outcome="rejected") or 0.0
    baseline = association_threads()
    reply, open_after = await asyncio.to_thread(refused_then_sending, app.port)
    assert reply == RJ_CALLING_AE, reply.hex()
    # Sta13: the P-DATA ignored (AA-6), the connection left to the peer to close.
    assert open_after
    await asyncio.to_thread(wait_threads, baseline, 5.0)
    await asyncio.to_thread(
        wait_until, lambda: app.sample("pacs_associations_total", outcome="rejected")
        == before + 1, 5.0, "the rejection counted once")


def refused_and_held(port: int) -> tuple[bytes, float]:
    """A refused RQ, the RJ read, the connection never closed by us: the PDU and the
    seconds until the server closed it (EOF, not a reset)."""
    with refused_connection(port) as sock:
        reply = read_pdu(sock)
        start = time.monotonic()
        sock.settimeout(10.0)
        assert sock.recv(1) == b""          # a reset raises ConnectionResetError
        return reply, time.monotonic() - start


async def test_a_peer_that_never_closes_is_closed_after_artim(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(whitelist(make_cfg, **{"server.acse_timeout": 1.5}))
    baseline = association_threads()
    reply, waited = await asyncio.to_thread(refused_and_held, app.port)
    assert reply == RJ_CALLING_AE, reply.hex()
    assert 1.2 <= waited <= 6.0, waited      # ARTIM = server.acse_timeout
    await asyncio.to_thread(wait_threads, baseline, 5.0)


async def test_a_refused_peer_that_never_closes_does_not_hold_a_thread_for_acse_timeout(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    """With the default ACSE timeout (30 s), Sta13 after the RJ still ends within the
    ARTIM bound (closing.STA13_ARTIM_S), with a FIN: refused floods cannot pin threads."""
    app = await start_server(whitelist(make_cfg, **{"server.acse_timeout": 30.0}))
    # The readiness probe's refused association ends first.
    baseline = await asyncio.to_thread(wait_threads, 0, 3.0)
    reply, waited = await asyncio.to_thread(refused_and_held, app.port)
    assert reply == RJ_CALLING_AE, reply.hex()
    assert STA13_ARTIM_S - 0.3 <= waited <= STA13_ARTIM_S + 3.0, waited
    assert await asyncio.to_thread(wait_threads, baseline, 2.0) <= baseline


def refusals(port: int, count: int) -> list[tuple[str, tuple[int, int, int] | None]]:
    """`count` associations refused by the whitelist, as pynetdicom's requestor saw
    them: its outcome and the (result, source, diagnostic) it received."""
    seen: list[tuple[str, tuple[int, int, int] | None]] = []
    for _ in range(count):
        with Scu("BADSCU").associate(port, require=False) as assoc:
            rsp = assoc.acceptor.primitive
            rsd = (rsp.result, rsp.result_source, rsp.diagnostic) if rsp else None
            seen.append(("rejected" if assoc.is_rejected else
                         "aborted" if assoc.is_aborted else "other", rsd))
    return seen


async def test_pynetdicom_sees_every_refusal_as_rejected(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(whitelist(make_cfg))
    before = app.sample("pacs_associations_total", outcome="rejected") or 0.0
    seen = await asyncio.to_thread(refusals, app.port, 50)
    assert seen == [("rejected", (1, 1, 3))] * 50
    await asyncio.to_thread(
        wait_until, lambda: app.sample("pacs_associations_total", outcome="rejected")
        == before + 50, 5.0, "fifty rejections counted")


def released_then_held(port: int) -> tuple[bytes, bool]:
    """An association released by the peer, which then does not close at once: the
    reply to the A-RELEASE-RQ and whether the server left the connection open."""
    sock = associated(port)
    try:
        sock.sendall(RELEASE_RQ)
        reply = read_pdu(sock)
        return reply, still_open(sock, 0.3)
    finally:
        sock.close()


async def test_after_the_release_reply_the_peer_closes(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app = await start_server(make_cfg())
    baseline = association_threads()
    reply, open_after = await asyncio.to_thread(released_then_held, app.port)
    assert reply[:1] == b"\x06", reply.hex()    # A-RELEASE-RP, then Sta13 (AR-4)
    assert open_after
    await asyncio.to_thread(wait_threads, baseline, 5.0)
    await asyncio.to_thread(
        wait_until, lambda: app.sample("pacs_associations_total", outcome="released")
        == 2, 5.0, "the release counted (with the readiness probe's)")


async def test_a_stop_closes_a_held_rejected_connection(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    """A stop aborts every association thread; one in Sta13 (no association any more)
    is closed, not sent an A-ABORT after its A-ASSOCIATE-RJ."""
    app = await start_server(whitelist(make_cfg, **{"server.shutdown_grace": 0.5}))
    with refused_connection(app.port) as sock:
        assert await asyncio.to_thread(read_pdu, sock) == RJ_CALLING_AE
        started = time.monotonic()
        await asyncio.to_thread(app.stop)
        assert time.monotonic() - started < 10
        assert await asyncio.to_thread(read_pdu, sock) == b""


async def test_an_admin_disconnect_of_a_peer_that_never_closes_leaves_the_loop_free(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    """The A-ABORT is sent and the server then waits (Sta13, bounded) for a peer that
    never closes; the admin API's handler runs on the event loop, so that wait must be
    off it: the HTTP side keeps answering meanwhile."""
    app = await start_server(make_cfg({"monitoring.metrics_port": 0, "admin.token": TOKEN}))
    base = base_url(app)
    sock = await asyncio.to_thread(connect_from, "127.0.0.1", app.port, 10.0)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq())
        assert (await asyncio.to_thread(read_pdu, sock))[:1] == b"\x02"   # A-ASSOCIATE-AC
        status, live = await http_get(base, "/api/associations", token=TOKEN)
        assert status == 200
        (entry,) = live["associations"]
        started = time.monotonic()
        disconnect = asyncio.create_task(
            http_call(base, "DELETE", f"/api/associations/{entry['id']}"))
        slowest = 0.0
        while not disconnect.done():
            asked = time.monotonic()
            assert await http_get(base, "/healthz") == (200, "ok\n")
            slowest = max(slowest, time.monotonic() - asked)
            await asyncio.sleep(0.02)
        status, body = await disconnect
        took = time.monotonic() - started
        assert status == 200, body
        assert (await asyncio.to_thread(read_pdu, sock))[:1] == b"\x07"   # A-ABORT
        assert slowest < 0.5, f"/healthz waited {slowest:.2f} s during the disconnect"
        assert took < STA13_ARTIM_S + 2.0, took
    finally:
        sock.close()
