"""EventHub: association events fanned out to the live feeds (/api/events, pacsctl watch).

`publish` is called from pynetdicom's threads; it hands the event to the loop with
`call_soon_threadsafe`, where each subscriber has a bounded queue. A subscriber that
does not keep up loses events (and is told how many) rather than slowing DICOM down.
`on_watched(True)` runs when the first subscriber comes, `on_watched(False)` when the
last one goes: with worker processes the workers forward events only meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Events from now on (the subscription starts at this call, not at the first
        iteration); closing the iterator ends it."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        if len(self._queues) == 1:
            self._on_watched(True)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[dict[str, Any]]
                     ) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
            if not self._queues:
                self._on_watched(False)
