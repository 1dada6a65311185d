"""RetrieveService: which files a C-MOVE/C-GET sends.

`check` runs first, anywhere (no I/O): a C-MOVE is refused on it before any association
to the destination is opened. `resolve` runs on the loop (index); `files` (or `path`) is
called in the association thread, which sends the file (dicom/transport.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydicom.uid import UID

from pacs_server.errors import InvalidQuery
from pacs_server.index.records import StoredRef
from pacs_server.services.query import FindRequest, QueryKey, QueryService
from pacs_server.storage.filestore import FileStore

__all__ = ["RetrieveService", "StoredRef", "check_identifier"]

# The unique key of each level, top down (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_LEVELS = list(UNIQUE_KEYS)


class RetrieveService:
    def __init__(self, queries: QueryService, files: FileStore) -> None:
        self._queries = queries
        self._files = files

    def check(self, req: FindRequest) -> None:
        """Raises InvalidQuery unless the identifier is valid for its level and model."""
        self._queries.validate(req)
        check_identifier(req)

    async def resolve(self, req: FindRequest) -> list[StoredRef]:
        """Instances selected by a retrieve identifier, in archive order."""
        self.check(req)
        return await self._queries.resolve(req)

    def path(self, ref: StoredRef) -> Path:
        return self._files.path(ref.path)

    def files(self, refs: Iterable[StoredRef]) -> Iterator[tuple[StoredRef, Path, bool]]:
        """Each instance with its archived file and whether that file is there.

        `FileStore.path` resolves every path component (a realpath: ~0.1-0.3 ms, a
        tenth of a sub-operation); a retrieve's files share a few directories, so each
        directory is resolved and checked once, and each file is one `lstat`: a regular
        file there is the same path `path()` gives; anything else (a link, a name
        such as "..") goes through `path()`.

        Raises:
            StorageUnavailable: a path outside the archive.
        """
        dirs: dict[str, Path] = {}
        for ref in refs:
            parent, _, name = ref.path.rpartition("/")
            if not parent or name in ("", ".", ".."):
                yield self._checked(ref)
                continue
            base = dirs.get(parent)
            if base is None:
                base = dirs[parent] = self._files.path(parent)
            path = base / name
            try:
                regular = stat.S_ISREG(os.lstat(path).st_mode)
            except FileNotFoundError:
                yield ref, path, False
                continue
            except OSError:
                regular = False
            yield (ref, path, True) if regular else self._checked(ref)

    def _checked(self, ref: StoredRef) -> tuple[StoredRef, Path, bool]:
        path = self.path(ref)
        return ref, path, path.is_file()


def check_identifier(req: FindRequest) -> None:
    """The unique keys of a retrieve identifier (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1).

    Baseline (hierarchical) retrieve: the retrieve level's unique key must be present,
    as one value or, for the UID levels, a list of UIDs (List of UID matching); Patient
    ID is a single value without wildcards. The unique keys of the levels above, which
    the standard asks for too, are taken when present and then checked the same way
    (one value each); without them the entity is found by its own UID, as most PACS do.

    Raises:
        InvalidQuery: naming the key and what is wrong with it.
    """
    by_keyword = {k.keyword: k for k in req.keys}
    levels = _LEVELS if req.model == "PATIENT" else _LEVELS[1:]
    for level in levels[:levels.index(req.level) + 1]:
        keyword = UNIQUE_KEYS[level]
        values = _values(by_keyword.get(keyword))
        if level == req.level and not values:
            raise InvalidQuery(f"a {level} level retrieve needs {keyword}")
        if len(values) > 1 and (level != req.level or level == "PATIENT"):
            raise InvalidQuery(f"{keyword} must be one value at the {req.level} level")
        for value in values:
            _check_value(keyword, value)


def _values(key: QueryKey | None) -> list[str]:
    if key is None:
        return []
    return [v.strip() for v in key.value.split("\\") if v.strip()]


def _check_value(keyword: str, value: str) -> None:
    if keyword == "PatientID":
        if "*" in value or "?" in value:
            raise InvalidQuery(f"PatientID {value!r}: no wildcards in a retrieve")
        return
    if not UID(value).is_valid:
        raise InvalidQuery(f"{keyword} {value[:80]!r} is not a valid UID")
