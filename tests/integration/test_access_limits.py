"""Access control pinned to hosts, and rate and concurrency limits, over real
associations from two loopback "hosts" (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from structlog.testing import capture_logs

from pacs_server.config import Config
from support.security import echo_from, hold
from support.server import RunningServer

PERMANENT_AE = "rejected 1/1/3"      # rejected-permanent, service user, calling AE
TRANSIENT_LIMIT = "rejected 2/3/2"   # rejected-transient, provider (presentation), limit


def rejected(app: RunningServer, reason: str) -> float:
    return app.sample("pacs_associations_rejected_total", reason=reason) or 0.0


async def echo(source: str, app: RunningServer, calling: str) -> str:
    assert app.port
    return await asyncio.to_thread(echo_from, source, app.port, calling)


async def test_known_ae_from_unknown_host_is_refused(start_server: Callable[..., Any],
                                                      make_cfg: Callable[..., Config]) -> None:
    app: RunningServer = await start_server(make_cfg({"access_control.allowed_ae_titles": [
        {"ae_title": "CT_01", "hosts": ["10.0.0.5", "127.0.0.0/31"]},
        {"ae_title": "MR_01", "hosts": ["127.0.0.2"]},
        "TESTSCU"]}))
    with capture_logs() as logs:
        assert await echo("127.0.0.1", app, "CT_01") == "accepted"
        assert await echo("127.0.0.2", app, "CT_01") == PERMANENT_AE
        assert await echo("127.0.0.2", app, "MR_01") == "accepted"
        assert await echo("127.0.0.1", app, "MR_01") == PERMANENT_AE
        assert await echo("127.0.0.2", app, "STRANGER") == PERMANENT_AE
        assert await echo("127.0.0.2", app, "TESTSCU") == "accepted"   # plain form: any host
    refused = [(e["calling_ae"], e["peer"], e["reason"]) for e in logs
               if e.get("event") == "security.association_refused"]
    assert refused == [("CT_01", "127.0.0.2", "host_not_allowed"),
                       ("MR_01", "127.0.0.1", "host_not_allowed"),
                       ("STRANGER", "127.0.0.2", "calling_ae_not_allowed")]
    assert rejected(app, "host_not_allowed") == 2
    assert rejected(app, "calling_ae_not_allowed") == 1


async def test_rate_limit_per_calling_ae_and_per_address(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app: RunningServer = await start_server(make_cfg({
        "limits.associations_per_minute_per_ae": 3,
        "limits.associations_per_minute_per_address": 6}))
    with capture_logs() as logs:
        outcomes = [await echo("127.0.0.2", app, "BURST") for _ in range(4)]
        assert outcomes == ["accepted"] * 3 + [TRANSIENT_LIMIT]
        # Another AE from the same address still has its own bucket, until the
        # address's bucket (6 a minute) is empty too.
        more = [await echo("127.0.0.2", app, f"OTHER{i}") for i in range(4)]
        assert more == ["accepted"] * 3 + [TRANSIENT_LIMIT]
        # A client from elsewhere is not affected.
        assert await echo("127.0.0.1", app, "ELSEWHERE") == "accepted"
    reasons = [e["reason"] for e in logs if e.get("event") == "association.limit_exceeded"]
    assert reasons == ["rate_per_ae", "rate_per_address"]
    assert rejected(app, "rate_per_ae") == 1 and rejected(app, "rate_per_address") == 1


async def test_concurrent_limits_and_reload(start_server: Callable[..., Any],
                                            make_cfg: Callable[..., Config]) -> None:
    limits = {"limits.concurrent_per_ae": 1, "limits.concurrent_per_address": 2}

    def current() -> Config:
        return make_cfg(limits)

    app: RunningServer = await start_server(current(), reload_config=current)
    assert app.port
    first = await asyncio.to_thread(hold, "127.0.0.2", app.port, "HOLDER")
    second = await asyncio.to_thread(hold, "127.0.0.2", app.port, "HOLDER2")
    try:
        assert first.is_established and second.is_established
        assert await echo("127.0.0.2", app, "HOLDER") == TRANSIENT_LIMIT
        assert await echo("127.0.0.2", app, "THIRD") == TRANSIENT_LIMIT
        assert await echo("127.0.0.1", app, "THIRD") == "accepted"
        assert rejected(app, "concurrent_per_ae") == 1
        assert rejected(app, "concurrent_per_address") == 1
        # SIGHUP raises the limits: the same requests now get in.
        limits.update({"limits.concurrent_per_ae": 5, "limits.concurrent_per_address": 5})
        assert app.reload() is True
        assert await echo("127.0.0.2", app, "HOLDER") == "accepted"
    finally:
        for assoc in (first, second):
            if assoc.is_established:
                await asyncio.to_thread(assoc.release)
    # Released associations give their slots back.
    assert await echo("127.0.0.2", app, "HOLDER") == "accepted"


async def test_max_associations_counts_both_listeners_and_only_associated(
        start_server: Callable[..., Any], make_cfg: Callable[..., Config]) -> None:
    app: RunningServer = await start_server(make_cfg({"server.max_associations": 2}))
    assert app.port
    held = [await asyncio.to_thread(hold, "127.0.0.1", app.port, f"H{i}") for i in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert await echo("127.0.0.2", app, "LATE") == TRANSIENT_LIMIT
        assert rejected(app, "max_associations") == 1
    finally:
        for assoc in held:
            await asyncio.to_thread(assoc.release)
    assert await echo("127.0.0.2", app, "LATE") == "accepted"
