"""RetrieveService: which files a C-MOVE/C-GET sends.

`resolve` runs on the loop (index); `path` is called in the association thread, which
sends the file (dicom/transport.py).
"""

from __future__ import annotations

from pathlib import Path

from pacs_server.index.records import StoredRef

__all__ = ["RetrieveService", "StoredRef"]
from pacs_server.services.query import FindRequest, QueryService
from pacs_server.storage.filestore import FileStore


class RetrieveService:
    def __init__(self, queries: QueryService, files: FileStore) -> None:
        self._queries = queries
        self._files = files

    async def resolve(self, req: FindRequest) -> list[StoredRef]:
        """Instances selected by a retrieve identifier, in archive order."""
        return await self._queries.resolve(req)

    def path(self, ref: StoredRef) -> Path:
        return self._files.path(ref.path)
