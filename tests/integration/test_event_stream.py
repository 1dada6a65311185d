"""/api/events' stream over a real socket: it outlives silences longer than the
keepalive, and it ends the subscription soon after its client goes, event or not
(while it is open, workers forward their association events to the supervisor)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from aiohttp import web

from pacs_server.events import EventHub
from pacs_server.web import events as stream


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_S", 0.3)
    monkeypatch.setattr(stream, "GONE_CHECK_S", 0.05, raising=False)


class Served:
    """The handler on an AppRunner as web/site.py runs the HTTP side (aiohttp's test
    server would cancel the handler when its client goes, which ours does not)."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/events"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(hub: EventHub) -> Served:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream.stream_events(request, hub.subscribe())

    app = web.Application()
    app.router.add_get("/events", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return Served(runner)


async def test_an_event_after_a_long_silence_still_arrives(quick: None) -> None:
    hub = EventHub(asyncio.get_running_loop())
    server = await serve(hub)
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(server.url) as rsp:
            assert await rsp.content.readline() == b": connected\n"
            await rsp.content.readline()
            # Silent for several keepalive periods: keepalive comments, and the stream
            # stays subscribed (it used to end at the first keepalive).
            lines = []
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                lines.append(await asyncio.wait_for(rsp.content.readline(), 2))
            assert b": keepalive\n" in lines
            hub.publish("association.closed", {"assoc": 7})
            got = b""
            while not got.startswith(b"data:"):
                got = await asyncio.wait_for(rsp.content.readline(), 2)
                assert got, "the stream ended"
            assert b'"assoc": 7' in got
    finally:
        await server.close()


async def test_a_client_that_leaves_ends_its_subscription_without_any_event(
        quick: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "KEEPALIVE_S", 5.0)     # no write for 5 s
    watched: list[bool] = []
    gone = asyncio.Event()

    def note(on: bool) -> None:
        watched.append(on)
        if not on:
            gone.set()

    hub = EventHub(asyncio.get_running_loop(), on_watched=note)
    server = await serve(hub)
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(server.url) as rsp:
            assert await rsp.content.readline() == b": connected\n"
            assert watched == [True]
        left = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), 2.0)
        # Noticed by the gone check (0.05 s here), not by a later write.
        assert watched == [True, False]
        assert time.monotonic() - left < 1.0
    finally:
        await server.close()


async def test_a_subscription_closed_before_its_first_event_ends() -> None:
    # A client gone while its stream waited for the workers (web/events.py `ready`).
    watched: list[bool] = []
    hub = EventHub(asyncio.get_running_loop(), on_watched=watched.append)
    feed = hub.subscribe()
    await feed.aclose()
    assert watched == [True, False]
    hub.publish("association.closed", {"assoc": 1})     # nobody subscribed: dropped
    assert [e async for e in feed] == []
