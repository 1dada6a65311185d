"""Server-sent events (/api/events): association events as they happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any

from aiohttp import web

KEEPALIVE_S = 15.0
# How often a silent stream looks whether its client is still there: aiohttp tells a
# handler only when it writes, and while the stream is open the workers forward their
# association events to the supervisor (workers/), which costs CPU per instance.
GONE_CHECK_S = 1.0


async def stream_events(request: web.Request, feed: AsyncIterator[dict[str, Any]],
                        ready: Callable[[], Awaitable[None]] | None = None
                        ) -> web.StreamResponse:
    """`event: <kind>` / `data: <json>` per event; a comment line every 15 s of silence
    keeps proxies from closing the stream. Ends when the client goes away (noticed
    within about a second, written to or not). The first line, `: connected`, is
    written once `ready()` returned: with worker processes, once every worker forwards
    its events, so a client that acts after reading it misses none of them."""
    rsp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                      "Cache-Control": "no-cache"})
    iterator = aiter(feed)
    try:
        await rsp.prepare(request)
        if ready is not None:
            await ready()
        await rsp.write(b": connected\n\n")
    except BaseException:
        await _close(feed)
        raise

    async def next_item() -> dict[str, Any]:
        return await anext(iterator)

    # One pending read at a time, kept across the silent checks: cancelling a read of
    # the feed (as wait_for does on its timeout) would close the feed's generator.
    pending: asyncio.Task[dict[str, Any]] | None = None
    silent_s = 0.0
    try:
        while not _gone(request):
            if pending is None:
                pending = asyncio.ensure_future(next_item())
            done, _ = await asyncio.wait({pending}, timeout=GONE_CHECK_S)
            if not done:
                silent_s += GONE_CHECK_S
                if silent_s >= KEEPALIVE_S:
                    silent_s = 0.0
                    await rsp.write(b": keepalive\n\n")
                continue
            task, pending, silent_s = pending, None, 0.0
            try:
                item = task.result()
            except StopAsyncIteration:
                break
            await rsp.write(f"event: {item.get('kind', 'message')}\n"
                            f"data: {json.dumps(item)}\n\n".encode())
    except ConnectionResetError:
        pass
    finally:
        if pending is not None:
            pending.cancel()
            with suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await _close(feed)
    return rsp


async def _close(feed: AsyncIterator[dict[str, Any]]) -> None:
    aclose = getattr(feed, "aclose", None)
    if aclose is not None:
        await aclose()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
