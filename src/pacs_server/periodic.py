"""A component that runs one piece of housekeeping every `interval_s` in the event loop."""

from __future__ import annotations

import asyncio


class PeriodicTask:
    """Runs `tick()` every `interval_s` (first at start when `at_start`) until closed.

    Subclasses set `name` and implement `tick()`; an exception in one tick is theirs to
    log, the loop goes on.
    """

    name = "periodic"

    def __init__(self, interval_s: float, at_start: bool = False) -> None:
        self._interval_s = interval_s
        self._at_start = at_start
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        if self._at_start:
            await self.tick()
        while True:
            await asyncio.sleep(self._interval_s)
            await self.tick()
