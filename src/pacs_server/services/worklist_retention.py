"""Removal of finished worklist items after `worklist.retention_days` (a server component)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from pacs_server.config import WorklistConfig
from pacs_server.index.worklist import WorklistRepository
from pacs_server.periodic import PeriodicTask

log = structlog.get_logger(__name__)


class WorklistRetention(PeriodicTask):
    """At start and then every `interval_s`, remove COMPLETED and DISCONTINUED items
    that finished more than `retention_days` ago. `reconfigure` takes a reloaded section.
    """

    name = "worklist-retention"

    def __init__(self, repo: WorklistRepository, cfg: WorklistConfig,
                 interval_s: float = 3600.0) -> None:
        super().__init__(interval_s, at_start=True)
        self._repo = repo
        self._cfg = cfg

    def reconfigure(self, cfg: WorklistConfig) -> None:
        self._cfg = cfg

    async def purge(self) -> int:
        """One pass; returns how many items were removed."""
        cutoff = datetime.now(UTC) - timedelta(days=self._cfg.retention_days)
        removed = await self._repo.purge_finished(cutoff)
        log.info("worklist.retention", removed=removed,
                 retention_days=self._cfg.retention_days)
        return removed

    async def tick(self) -> None:
        try:
            await self.purge()
        except Exception as exc:  # a database hiccup: log, and the next pass retries
            log.warning("worklist.retention_failed", error=str(exc))
