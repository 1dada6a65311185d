"""Housekeeping of the file archive while the server runs: the stale partial-file sweep."""

from __future__ import annotations

import asyncio

import structlog

from pacs_server.periodic import PeriodicTask
from pacs_server.storage.filestore import FileStore

log = structlog.get_logger(__name__)


class IncomingSweeper(PeriodicTask):
    """Every `interval_s`, drop partial receive files older than `max_age_s`.

    A sender that vanished mid-transfer leaves its temporary file in `.incoming`; the
    start-up sweep catches those of a previous run, this one those of a long-running one.
    """

    name = "incoming-sweeper"

    def __init__(self, files: FileStore, max_age_s: float, interval_s: float = 60.0) -> None:
        super().__init__(interval_s)
        self._files = files
        self._max_age_s = max_age_s

    async def tick(self) -> None:
        removed = await asyncio.to_thread(self._files.sweep_incoming, self._max_age_s)
        if removed:
            log.warning("storage.stale_partial_files_removed", count=removed)
