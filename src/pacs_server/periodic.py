"""A component that runs one piece of housekeeping every `interval_s` in the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

# Takes or renews the lease `name` for `ttl_s` seconds: True if this process may run.
Gate = Callable[[str, float], Awaitable[bool]]


class PeriodicTask:
    """Runs `tick()` every `interval_s` (first at start when `at_start`) until closed.

    Subclasses set `name` and implement `tick()`; an exception in one tick is theirs to
    log, the loop goes on. With a `gate` (`singleton()`), a run happens only in the
    process holding the lease `name` (index/leases.py), so the job runs once across all
    the processes sharing the index. The lease lasts two intervals and a margin, and
    its holder renews it each run: if the holder stops, another process takes over
    within that time.
    """

    name = "periodic"

    def __init__(self, interval_s: float, at_start: bool = False) -> None:
        self._interval_s = interval_s
        self._at_start = at_start
        self._task: asyncio.Task[None] | None = None
        self._gate: Gate | None = None

    def singleton(self, gate: Gate) -> None:
        """Run only while holding the lease of this job's `name`."""
        self._gate = gate

    async def _may_run(self) -> bool:
        if self._gate is None:
            return True
        try:
            return await self._gate(self.name, 2 * self._interval_s + 10.0)
        except Exception as exc:  # the index is down: skip this run, try the next one
            log.warning("periodic.lease_failed", job=self.name, error=str(exc))
            return False

    async def _tick_if_ours(self) -> None:
        if await self._may_run():
            log.debug("periodic.run", job=self.name)
            await self.tick()

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
            await self._tick_if_ours()
        while True:
            await asyncio.sleep(self._interval_s)
            await self._tick_if_ours()
