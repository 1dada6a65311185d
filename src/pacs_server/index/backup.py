"""A consistent online copy of the SQLite index while the server runs.

sqlite3's online backup API (`Connection.backup`) copies the database page by page and
restarts when a writer changes a page already copied, so the copy is one consistent
snapshot even with C-STOREs committing meanwhile. PostgreSQL has pg_dump for this.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pacs_server.config import DatabaseConfig
from pacs_server.errors import ConflictingRequest, InvalidRequest
from pacs_server.index.engine import sqlite_path


def check_destination(destination: str) -> Path:
    """An absolute path to a new file in an existing directory.

    Raises:
        InvalidRequest, ConflictingRequest: with the reason.
    """
    if not destination or "\x00" in destination:
        raise InvalidRequest("destination: required")
    path = Path(destination)
    if not path.is_absolute():
        raise InvalidRequest(f"destination: {destination!r} must be an absolute path "
                             "(it is a path on the server)")
    if path.exists():
        raise ConflictingRequest(f"destination {destination} exists; choose a new file")
    if not path.parent.is_dir():
        raise InvalidRequest(f"destination: directory {path.parent} does not exist")
    return path


def backup_sqlite(cfg: DatabaseConfig, destination: str, pages: int = 1024) -> dict[str, int]:
    """Copy the index to `destination` (blocking: run it in a thread).

    Raises:
        InvalidRequest: not SQLite, or a bad destination.
    """
    if cfg.url and not cfg.url.startswith("sqlite"):
        raise InvalidRequest("the index is not SQLite: back it up with pg_dump "
                             "(see docs/operations.md)")
    target = check_destination(destination)
    source = sqlite3.connect(f"file:{sqlite_path(cfg)}?mode=ro",
                             uri=True, timeout=30)
    try:
        dest = sqlite3.connect(target)
        try:
            source.backup(dest, pages=pages)
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dest.close()
    finally:
        source.close()
    return {"bytes": os.path.getsize(target)}
