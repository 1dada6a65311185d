"""`DicomWeb`: what the DICOMweb endpoints (web/dicomweb/) are handed, built by the
composition root from the parts the DICOM side uses: the QueryService (C-FIND
matching), the archive (the C-STORE path) and its file store, and the bridge's runner
for index calls from worker threads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pacs_server.config import DicomWebConfig
from pacs_server.errors import NotFound
from pacs_server.index.repository import IndexRepository
from pacs_server.services.archive import ArchiveService, Runner
from pacs_server.services.dicomweb_metadata import MetadataCache
from pacs_server.services.dicomweb_query import DicomWebQueries
from pacs_server.services.dicomweb_retrieve import DicomWebRetrieve
from pacs_server.services.dicomweb_store import PartResult, store_part
from pacs_server.services.query import QueryService

__all__ = ["DicomWeb", "PartResult"]


class DicomWeb:
    """The DICOMweb use cases over the server's services; `config()` is the section
    now in force (reloadable parts: access, users, CORS origins, limits)."""

    def __init__(self, queries: QueryService, repo: IndexRepository, archive: ArchiveService,
                 run: Runner, accepted_sop_classes: tuple[str, ...],
                 config: Callable[[], DicomWebConfig]) -> None:
        self.search = DicomWebQueries(queries)
        self.retrieve = DicomWebRetrieve(queries, archive.files)
        self.metadata = MetadataCache(archive.files.root)
        self.config = config
        self._archive = archive
        self._repo = repo
        self._run = run
        self._accepted = frozenset(accepted_sop_classes)

    @property
    def incoming(self) -> Path:
        """Where received parts are written (the archive's filesystem)."""
        return self._archive.files.incoming

    async def store(self, part: Path, study_uid: str, source: str) -> PartResult:
        """One STOW-RS part through the C-STORE path, in a worker thread."""
        return await asyncio.to_thread(store_part, self._archive, part, self._accepted,
                                       study_uid, source, self._run)

    async def series_metadata(self, study_uid: str, series_uid: str) -> bytes:
        """The series' metadata JSON, gzipped: from the cache when the series has not
        changed, else built from its files in a worker thread. UIDs are checked ones.

        Raises:
            NotFound: no such series in the study.
        """
        version = await self._repo.series_version(study_uid, series_uid)
        if version[0] == 0:
            raise NotFound(f"no series {series_uid} in study {study_uid}")
        cached = await asyncio.to_thread(self.metadata.cached, series_uid, version)
        if cached is not None:
            return cached
        refs = await self.retrieve.select(StudyInstanceUID=study_uid,
                                          SeriesInstanceUID=series_uid)
        return await asyncio.to_thread(self.metadata.build, series_uid, version, refs,
                                       self.retrieve.path)
