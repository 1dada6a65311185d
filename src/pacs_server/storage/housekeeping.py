"""Housekeeping of the file archive while the server runs: the stale partial-file sweep."""

from __future__ import annotations

import asyncio

import structlog

from pacs_server.storage.filestore import FileStore

log = structlog.get_logger(__name__)


class IncomingSweeper:
    """Every `interval_s`, drop partial receive files older than `max_age_s`.

    A sender that vanished mid-transfer leaves its temporary file in `.incoming`; the
    start-up sweep catches those of a previous run, this one those of a long-running one.
    """

    name = "incoming-sweeper"

    def __init__(self, files: FileStore, max_age_s: float, interval_s: float = 60.0) -> None:
        self._files = files
        self._max_age_s = max_age_s
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

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
        while True:
            await asyncio.sleep(self._interval_s)
            removed = await asyncio.to_thread(self._files.sweep_incoming, self._max_age_s)
            if removed:
                log.warning("storage.stale_partial_files_removed", count=removed)
