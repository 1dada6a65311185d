"""Server-sent events (/api/events): association events as they happen."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from aiohttp import web

KEEPALIVE_S = 15.0


async def stream_events(request: web.Request,
                        feed: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    """`event: <kind>` / `data: <json>` per event; a comment line every 15 s of silence
    keeps proxies from closing the stream. Ends when the client goes away."""
    rsp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                      "Cache-Control": "no-cache"})
    await rsp.prepare(request)
    await rsp.write(b": connected\n\n")
    async with aclosing(feed) as events:
        iterator = aiter(events)
        while True:
            try:
                item = await asyncio.wait_for(anext(iterator), KEEPALIVE_S)
            except TimeoutError:
                await rsp.write(b": keepalive\n\n")
                continue
            except StopAsyncIteration:
                break
            try:
                await rsp.write(f"event: {item.get('kind', 'message')}\n"
                                f"data: {json.dumps(item)}\n\n".encode())
            except ConnectionResetError:
                break
    return rsp
