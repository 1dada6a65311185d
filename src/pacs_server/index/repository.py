"""IndexRepository: the archive index as the application holds it.

A thin façade over the two halves, which share nothing but the schema: `IndexWriter`
(`index/writer.py`: the writer task, group commit, retries, caches) and `IndexReader`
(`index/reader.py`: C-FIND/retrieve reads and lookups). Each owns every use of its
engine's connections; nothing outside `index/` sees an engine or a SQL statement.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from pacs_server.index.reader import IndexReader, Match, MatchKey
from pacs_server.index.records import InstanceRecord, StoredRef
from pacs_server.index.writer import IndexWriter

__all__ = ["IndexRepository", "Match", "MatchKey", "StoredRef"]


class IndexRepository:
    """The archive index. Create one per process; `start()` before use, `close()` after."""

    def __init__(self, engine: AsyncEngine, commit_batch: int = 256,
                 on_commit: Any = None, writer_engine: AsyncEngine | None = None,
                 on_retry: Any = None, on_lock_wait: Any = None,
                 thread_connect: Any = None) -> None:
        """`writer_engine` (create_engine(..., writer=True)) serves the write path;
        `engine` the reads; `thread_connect` see IndexWriter."""
        self.reader = IndexReader(engine)
        self.writer = IndexWriter(writer_engine or engine, commit_batch, on_commit, on_retry,
                                  on_lock_wait, thread_connect)

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        """Finish queued writes, stop the writer."""
        await self.writer.close()

    async def add_instance(self, record: InstanceRecord, replace: bool = False) -> str | None:
        """See `IndexWriter.add_instance`."""
        return await self.writer.add_instance(record, replace)

    def submit_instance(self, record: InstanceRecord, replace: bool = False
                        ) -> concurrent.futures.Future[str | None]:
        """See `IndexWriter.submit` (from another thread than the loop's)."""
        return self.writer.submit(record, replace)

    def find(self, level: str, keys: Iterable[MatchKey], **options: Any
             ) -> AsyncGenerator[list[Match], None]:
        """See `IndexReader.find`."""
        return self.reader.find(level, keys, **options)

    async def instance_path(self, sop_instance_uid: str) -> str | None:
        return await self.reader.instance_path(sop_instance_uid)

    async def counts(self) -> dict[str, int]:
        return await self.reader.counts()

    async def series_version(self, study_uid: str, series_uid: str) -> tuple[int, int]:
        """See `IndexReader.series_version`."""
        return await self.reader.series_version(study_uid, series_uid)

    async def refs(self, sop_instance_uids: Iterable[str]) -> list[StoredRef]:
        return await self.reader.refs(sop_instance_uids)
