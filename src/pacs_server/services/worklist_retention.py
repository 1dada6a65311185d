"""Removal of finished worklist items after `worklist.retention_days` (a server component)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog

from pacs_server.config import WorklistConfig
from pacs_server.index.worklist import WorklistRepository

log = structlog.get_logger(__name__)


class WorklistRetention:
    """At start and then every `interval_s`, remove COMPLETED and DISCONTINUED items
    that finished more than `retention_days` ago. `reconfigure` takes a reloaded section.
    """

    name = "worklist-retention"

    def __init__(self, repo: WorklistRepository, cfg: WorklistConfig,
                 interval_s: float = 3600.0) -> None:
        self._repo = repo
        self._cfg = cfg
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def reconfigure(self, cfg: WorklistConfig) -> None:
        self._cfg = cfg

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

    async def purge(self) -> int:
        """One pass; returns how many items were removed."""
        cutoff = datetime.now(UTC) - timedelta(days=self._cfg.retention_days)
        removed = await self._repo.purge_finished(cutoff)
        log.info("worklist.retention", removed=removed,
                 retention_days=self._cfg.retention_days)
        return removed

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:  # a database hiccup: log, and the next pass retries
                log.warning("worklist.retention_failed", error=str(exc))
            await asyncio.sleep(self._interval_s)
