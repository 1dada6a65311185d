"""EventHub: association events fanned out to the live feeds (/api/events, pacsctl watch).

`publish` is called from pynetdicom's threads; it hands the event to the loop with
`call_soon_threadsafe`, where each subscriber has a bounded queue. A subscriber that
does not keep up loses events (and is told how many) rather than slowing DICOM down.
`on_watched(True)` runs when the first subscriber comes, `on_watched(False)` when the
last one goes: with worker processes the workers forward events only meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

QUEUE_SIZE = 1000


class EventHub:
    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_watched: Callable[[bool], None] = lambda _on: None) -> None:
        self._loop = loop
        self._on_watched = on_watched
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, kind: str, fields: dict[str, Any]) -> None:
        """Thread-safe; a no-op once the loop is closed."""
        if not self._queues:
            return
        event = {"kind": kind, "time": datetime.now(UTC).isoformat(), **fields}
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:
            pass

    def _deliver(self, event: dict[str, Any]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                pass

    def subscribe(self) -> Subscription:
        """Events from now on (the subscription starts at this call, not at the first
        iteration); `aclose()` ends it, iterated or not."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        if len(self._queues) == 1:
            self._on_watched(True)
        return Subscription(self, queue)

    def _leave(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)
        if not self._queues:
            self._on_watched(False)


class Subscription:
    """One live feed's events. Not an async generator: one closed before its first
    iteration (a client gone while the feed waited for the workers) would never run
    its cleanup, and the workers would forward for ever."""

    def __init__(self, hub: EventHub, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._hub, self._queue = hub, queue
        self._closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._leave(self._queue)
