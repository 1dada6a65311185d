"""RetrieveService: which files a C-MOVE/C-GET sends, and reading them back.

`resolve` runs on the loop (index); `load` runs in the association thread (file I/O).
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pacs_server.errors import MissingFile
from pacs_server.index.records import StoredRef

__all__ = ["RetrieveService", "StoredRef", "placeholder"]
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

    def load(self, ref: StoredRef) -> Dataset:
        """Read an archived instance (with its file meta) for a C-STORE sub-operation.

        Raises:
            MissingFile: the file is gone or unreadable.
        """
        try:
            return dcmread(self._files.path(ref.path))
        except (OSError, InvalidDicomError, EOFError) as exc:
            raise MissingFile(f"{ref.sop_instance_uid}: {exc}") from None


def placeholder(ref: StoredRef) -> Dataset:
    """Stands in for an unreadable instance: its send fails, so the sub-operation is
    counted as failed and its UID reported in Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPInstanceUID = ref.sop_instance_uid
    return ds
