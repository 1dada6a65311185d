"""The admin API's access entries and pause go through the one association policy: at
once, pinned to hosts, never widening what the config file lists, counted once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pacs_server.config import Config
from support.http import TOKEN, base_url, http_call
from support.scu import SUCCESS, Scu
from support.server import RunningServer

LOCAL_LIMIT = (0x02, 0x03, 0x02)
NOT_RECOGNISED = (0x01, 0x01, 0x03)


def attempt(port: int, calling: str) -> tuple[int, ...]:
    """() when the association is accepted (and answers C-ECHO), else the A-ASSOCIATE-RJ
    (result, source, diagnostic)."""
    with Scu(calling).associate(port, require=False) as assoc:
        if assoc.is_established:
            assert assoc.send_c_echo().Status == SUCCESS
            return ()
        assert assoc.is_rejected, "neither accepted nor rejected"
        rj = assoc.acceptor.primitive
        return (rj.result, rj.result_source, rj.diagnostic)


async def test_api_entries_and_pause_are_part_of_the_policy(
        start_server: Callable[..., Awaitable[RunningServer]],
        make_cfg: Callable[..., Config]) -> None:
    srv = await start_server(make_cfg({
        "monitoring.metrics_port": 0, "admin.token": TOKEN,
        # The readiness probe's AE title must get in; FARAWAY only from another host.
        "access_control.allowed_ae_titles": [
            "TESTSCU", {"ae_title": "FARAWAY", "hosts": ["10.9.9.9"]}]}))
    base, port = base_url(srv), srv.port

    def rejected(reason: str) -> float:
        return srv.sample("pacs_associations_rejected_total", reason=reason) or 0.0

    assert await asyncio.to_thread(attempt, port, "NEWAE") == NOT_RECOGNISED
    assert rejected("calling_ae_not_allowed") == 1
    assert (await http_call(base, "POST", "/api/ae", body={"ae_title": "NEWAE"}))[0] == 200
    assert await asyncio.to_thread(attempt, port, "NEWAE") == ()

    # The config file decides for what it lists: no API entry may widen FARAWAY.
    status, body = await http_call(base, "POST", "/api/ae", body={"ae_title": "FARAWAY"})
    assert status == 409 and "config file" in body["error"]
    assert await asyncio.to_thread(attempt, port, "FARAWAY") == NOT_RECOGNISED
    assert rejected("host_not_allowed") == 1

    # An API entry bound to another address does not let this host in.
    assert (await http_call(base, "POST", "/api/ae",
                            body={"ae_title": "HOSTAE", "host": "10.1.1.1"}))[0] == 200
    assert await asyncio.to_thread(attempt, port, "HOSTAE") == NOT_RECOGNISED
    assert rejected("host_not_allowed") == 2

    status, body = await http_call(base, "GET", "/api/ae")
    listed = body["ae_titles"]
    assert status == 200
    assert {"ae_title": "FARAWAY", "host": "10.9.9.9", "tls": False,
            "origin": "config"} in listed
    assert {"ae_title": "HOSTAE", "host": "10.1.1.1", "origin": "api"} in listed

    # Pause: transient rejection, counted once under its own reason; resume lets in.
    assert (await http_call(base, "POST", "/api/pause"))[0] == 200
    assert await asyncio.to_thread(attempt, port, "NEWAE") == LOCAL_LIMIT
    assert rejected("paused") == 1
    assert (await http_call(base, "POST", "/api/resume"))[0] == 200
    assert await asyncio.to_thread(attempt, port, "NEWAE") == ()
    assert rejected("paused") == 1
    assert srv.sample("pacs_associations_total", outcome="rejected") == 4

    # Removal applies at once too.
    assert (await http_call(base, "DELETE", "/api/ae", body={"ae_title": "NEWAE"}))[0] == 200
    assert await asyncio.to_thread(attempt, port, "NEWAE") == NOT_RECOGNISED
